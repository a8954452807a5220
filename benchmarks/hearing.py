"""The second pass of hearing, measured: the window Whisper's encoder reads, what goes into its prompt, and the
runtime, on the real recordings and on synthesized sentences with rare names. Figures side by side, one run.

    .venv/bin/python benchmarks/hearing.py [--whisper base] [--threads 2] [--json OUT]
        [--parts window,prompt,terms,runtime]

- window: WER on the 14 real recordings and ms per utterance (p50; the encoder and the decoder, greedy) for
  windows of the bare utterance + 1 s, and of max(utterance + 1 s, W) for W = 5, 7.5, 10, 15 and 30 s.
- prompt: the recordings in order, each read with nothing before it, or with the previous utterance's final as
  Whisper's previous text (what `condition_on_previous_text` does in faster-whisper).
- terms: sentences with rare names and jargon, said by Piper's voice (espeak-ng where Piper is not installed),
  read without and with the names given as terms: the share of the names spelled right, and the WER.
- runtime: the encoder of a 10 s window in CTranslate2 (int8) against the ONNX Runtime graph of the default
  bundle's encoder (fp32, the same Whisper weights), and the decoder's ms per token.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BenchmarkError, cpu_model, quantile, real_utterances, run_main

from tympan.atomic import write_json

WHISPER_NAMES = {"base": "whisper-base", "tiny.en": "whisper-tiny.en"}
PARTS = ("window", "prompt", "terms", "runtime")
# (sentence, the names in it): names people and tools really have, that Whisper's vocabulary splits into pieces.
TERMS = [
    ("Please send the report to Siobhan Featherstonehaugh by Friday.", "Siobhan Featherstonehaugh"),
    ("Ask Tadhg to review the PyTorch pull request.", "Tadhg, PyTorch"),
    ("The Kubernetes cluster sends its logs to Grafana.", "Kubernetes, Grafana"),
    ("Doctor Przybylski prescribed metoprolol twice a day.", "Przybylski, metoprolol"),
    ("We flew from Reykjavik to Kangerlussuaq last week.", "Reykjavik, Kangerlussuaq"),
    ("Mister Wojciechowski moved to Szczecin in the spring.", "Wojciechowski, Szczecin"),
    ("Nguyen Thuy will present the quarterly OKRs.", "Nguyen Thuy, OKRs"),
    ("The stew needs gochujang and a spoon of za'atar.", "gochujang, za'atar"),
    ("Saoirse fixed the Zyxel router this morning.", "Saoirse, Zyxel"),
    ("Our meeting with Xiomara Quintanilla is at noon.", "Xiomara Quintanilla"),
    ("The invoice from Okonkwo Logistics arrived late.", "Okonkwo"),
    ("Run the migration with Alembic before deploying to Heroku.", "Alembic, Heroku"),
]


def _hearing(name: str, threads: int, window_s: float = 10.0, pad_s: float = 1.0):
    from tympan.runtime.whisper import HearingSettings, WhisperHearing
    from tympan.training.model.base_models import whisper_ct2_dir

    return WhisperHearing(whisper_ct2_dir(WHISPER_NAMES[name]), HearingSettings(window_s=window_s, pad_s=pad_s),
                          threads)


def _timed(hearing, audio: np.ndarray, terms: str | None = None) -> tuple[str, float]:
    t0 = time.perf_counter()
    heard = hearing.hear(audio, terms)
    return heard.text, (time.perf_counter() - t0) * 1000


def window_part(name: str, threads: int) -> list[dict]:
    from tympan.scoring import wer

    utterances = real_utterances()
    rows = []
    for label, window_s in [("utterance + 1 s", 0.01), *((f"max(utterance + 1 s, {w:g} s)", w)
                                                         for w in (5.0, 7.5, 10.0, 15.0, 30.0))]:
        hearing = _hearing(name, threads, window_s)
        _timed(hearing, utterances[0].audio)  # warm-up
        texts, ms = zip(*(_timed(hearing, u.audio) for u in utterances), strict=True)
        rows.append({"window": label, "wer_pct": round(wer([u.text for u in utterances], list(texts)), 1),
                     "ms_p50": round(quantile(list(ms), 0.5)), "ms_p95": round(quantile(list(ms), 0.95))})
    return rows


def prompt_part(name: str, threads: int) -> list[dict]:
    from tympan.scoring import wer

    utterances = real_utterances()
    hearing = _hearing(name, threads)
    refs = [u.text for u in utterances]
    alone = [hearing.hear(u.audio).text for u in utterances]
    chained, previous = [], None
    for u in utterances:
        chained.append(hearing.hear(u.audio, previous).text)
        previous = chained[-1] or previous
    return [{"prompt": "nothing", "wer_pct": round(wer(refs, alone), 1)},
            {"prompt": "the previous final", "wer_pct": round(wer(refs, chained), 1)}]


def _synthesize(texts: list[str], threads: int) -> tuple[str, list[np.ndarray]]:
    from tympan.audio import load_audio

    try:
        import random

        from tympan.training.corpus.voices import PiperEngine, Voice, render_params

        voice = Voice("piper:joe", "piper", "piper:joe", "us-m", "joe")
        # No sampling noise: Piper's graph draws it unseeded, and the same audio every run makes runs compare.
        render = {**render_params(voice, random.Random(0)), "speed": 1.0, "pitch": 0.0, "noise_scale": 0.0,
                  "noise_w": 0.0}
        engine = PiperEngine(threads)
        return "piper joe", [engine.synthesize(voice, t, render) for t in texts]
    except ImportError:
        pass
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True)
            out.append(load_audio(wav, 16000))
    return "espeak-ng en-us", out


def _names_right(text: str, names: str) -> tuple[int, int]:
    words = [w.strip(",") for w in names.split()]
    said = {w.strip(".,!?").lower() for w in text.split()}
    return sum(w.lower() in said for w in words), len(words)


def terms_part(name: str, threads: int) -> tuple[str, list[dict], list[dict]]:
    from tympan.scoring import wer

    voice, audios = _synthesize([t for t, _ in TERMS], threads)
    hearing = _hearing(name, threads)
    rows, samples = [], []
    for label, with_terms in (("without terms", False), ("with the names as terms", True)):
        texts = [hearing.hear(a, names if with_terms else None).text for a, (_, names) in zip(audios, TERMS,
                                                                                              strict=True)]
        right = [_names_right(t, names) for t, (_, names) in zip(texts, TERMS, strict=True)]
        rows.append({"reading": label, "names_right": sum(r for r, _ in right), "names": sum(n for _, n in right),
                     "wer_pct": round(wer([t for t, _ in TERMS], texts), 1)})
        samples.append({"reading": label, "texts": texts})
    return voice, rows, samples


def runtime_part(name: str, threads: int) -> dict:
    import ctranslate2
    import onnxruntime as ort

    from tympan.runtime.bundle import default_bundle
    from tympan.runtime.onnx_encoder import session_options

    utterances = real_utterances()
    hearing = _hearing(name, threads)
    window, _ = hearing.window(utterances[0].audio)
    storage = ctranslate2.StorageView.from_array(window)
    hearing.model.encode(storage, to_cpu=True)
    ct2 = []
    for _ in range(10):
        t0 = time.perf_counter()
        hearing.model.encode(storage, to_cpu=True)
        ct2.append((time.perf_counter() - t0) * 1000)
    out = {"ct2_int8_encoder_ms": round(statistics.median(ct2), 1)}
    bundle = default_bundle()
    session = ort.InferenceSession(str(bundle / "encoder.onnx"), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feats = np.ascontiguousarray(window[0].T[None])
    inputs = {"features": feats, "lengths": np.array([feats.shape[1]], np.int64)}
    session.run(None, inputs)
    onnx = []
    for _ in range(10):
        t0 = time.perf_counter()
        session.run(None, inputs)
        onnx.append((time.perf_counter() - t0) * 1000)
    out["onnx_fp32_encoder_ms"] = round(statistics.median(onnx), 1)
    per_token = []
    for u in utterances:
        window, _ = hearing.window(u.audio)
        encoded = hearing.model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)
        t0 = time.perf_counter()
        (result,) = hearing.model.generate(encoded, [hearing.prompt()], beam_size=1, max_length=64)
        per_token.append((time.perf_counter() - t0) * 1000 / (len(result.sequences_ids[0]) + 1))
    out["ct2_int8_decoder_ms_per_token"] = round(statistics.median(per_token), 1)
    out["window_frames"] = int(window.shape[2])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper", default="base", choices=sorted(WHISPER_NAMES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        raise BenchmarkError(f"--parts: unknown part {bad[0]!r} ({', '.join(PARTS)})")
    print(f"Whisper {args.whisper}, CTranslate2 int8, {args.threads} threads; {cpu_model()}")
    report: dict = {"whisper": args.whisper, "threads": args.threads, "cpu": cpu_model()}
    if "window" in parts:
        rows = report["window"] = window_part(args.whisper, args.threads)
        print("\n| window | WER % (14 recordings) | ms p50 | ms p95 |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['window']} | {r['wer_pct']:.1f} | {r['ms_p50']} | {r['ms_p95']} |")
    if "prompt" in parts:
        rows = report["prompt"] = prompt_part(args.whisper, args.threads)
        print("\n| previous text in the prompt | WER % (14 recordings in order) |\n|---|---|")
        for r in rows:
            print(f"| {r['prompt']} | {r['wer_pct']:.1f} |")
    if "terms" in parts:
        voice, rows, samples = terms_part(args.whisper, args.threads)
        report["terms"] = {"voice": voice, "rows": rows, "samples": samples}
        print(f"\n{len(TERMS)} sentences with rare names ({voice})\n\n| reading | names right | WER % |\n|---|---|---|")
        for r in rows:
            print(f"| {r['reading']} | {r['names_right']} of {r['names']} | {r['wer_pct']:.1f} |")
    if "runtime" in parts:
        r = report["runtime"] = runtime_part(args.whisper, args.threads)
        print(f"\nencoder, one {r['window_frames'] / 100:g} s window: CTranslate2 int8 {r['ct2_int8_encoder_ms']} ms, "
              f"ONNX Runtime fp32 (the bundle's encoder graph) {r['onnx_fp32_encoder_ms']} ms; "
              f"decoder {r['ct2_int8_decoder_ms_per_token']} ms per token")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    run_main(main)
