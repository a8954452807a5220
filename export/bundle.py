"""`tympan export`: a training checkpoint -> a verified serving bundle.

BUNDLE/
  manifest.json     `tympan.runtime.bundle_manifest.BundleManifest`: format, versions, source, files
                    (sha256, size), audio and feature parameters, encoder, LLM runtime, prompt frame and
                    instructions, tasks, the checks run at export
  encoder.onnx      features -> LLM input embeddings (encoder + projector), fp32
  encoder.int8.onnx with --quantize int8 (then the one the bundle serves)
  llm_onnx/         the merged LLM (LoRA folded in) as one ONNX graph for prefill and decode
                    (KV cache), its weights, the embedding table   [--llm onnx, the default]
  llm/              the merged LLM in safetensors, for PyTorch       [--llm torch]
  tokenizer/        tokenizer.json and friends
  hearing/          with hearing.kind "whisper": Whisper's CTranslate2 files (model.bin, config.json,
                    tokenizer.json), the second pass that writes the finals' words
  text_llm/         with text_llm.checkpoint: the LLM that answers from the heard text, one ONNX graph
                    (int8), its float16 embedding table and tokenizer.json (export/text_llm.py)

The phases: check the request, prepare (load the checkpoint, pick the verification inputs, compute the
checkpoint's reference outputs), write the encoder, the LLM and the tokenizer, write the manifest, verify the
finished files, publish. The bundle is built in a temporary directory beside OUT and renamed at the end, so an
interrupted export never leaves a directory that looks complete. Verification runs on the finished files: the
ONNX encoder against PyTorch (max abs diff <= 1e-4 in fp32), and the bundle's greedy tokens against the
unmerged checkpoint's, token for token, both through the runtime's decode loop without its loop guard.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tympan import __version__
from tympan.atomic import atomic_directory, write_json
from tympan.audio import load_audio
from tympan.checksum import sha256_file
from tympan.errors import TympanError
from tympan.export.encoder_graph import INPUTS, OPSET, export_encoder, outputs, torch_embeddings
from tympan.export.text_llm import TextLlmExportError, write_text_llm
from tympan.manifest import Example, load_manifests
from tympan.runtime.bundle import Bundle, load_bundle
from tympan.runtime.bundle_manifest import (
    MANIFEST,
    Audio,
    BundleManifest,
    Encoder,
    FileEntry,
    Hearing,
    LanguageModel,
    Llm,
    OnnxChecks,
    Prompt,
    PromptFrame,
    Source,
    Verification,
)
from tympan.runtime.ctc_lm import LM_FILE, LmError, NgramLM
from tympan.runtime.decode import DecodeSettings
from tympan.runtime.speech_model import SpeechModel
from tympan.training.model.checkpoint import load_checkpoint, read_meta, takes_speech
from tympan.training.model.speech_llm import SpeechLLM

ENCODER_TOLERANCE = 1e-4
FP32_ENCODER = "encoder.onnx"
INT8_ENCODER = "encoder.int8.onnx"


class ExportError(TympanError, RuntimeError):
    """The export could not be made or did not pass its checks."""


@dataclass(frozen=True)
class Prepared:
    """The checkpoint, the inputs the export is verified on, and the checkpoint's outputs for them."""

    checkpoint: Path
    meta: dict[str, Any]
    model: SpeechLLM
    examples: list[Example]
    audios: list[np.ndarray]
    features: list[np.ndarray]
    instructions: list[str]
    embeddings: list[np.ndarray]  # PyTorch encoder + projector
    settings: DecodeSettings  # every token up to the model's limit, loops and all: the strictest comparison
    tokens: list[list[int]]  # greedy, unmerged LoRA, under `settings`


def export_bundle(
    checkpoint: Path,
    out: Path,
    *,
    quantize: str | None = None,
    llm_runtime: str = "onnx",
    verify_manifests: Sequence[Path] = (),
    eval_manifests: Sequence[Path] = (),
    verify_count: int = 4,
    force: bool = False,
) -> BundleManifest:
    checkpoint, out = Path(checkpoint), Path(out)
    meta = check_request(checkpoint, out, quantize, llm_runtime, force)
    prep = prepare(checkpoint, meta, verify_manifests, verify_count)
    with atomic_directory(out) as tmp:  # published (renamed to `out`) when the block ends without error
        encoder_diff = write_encoder(prep, tmp)
        write_tokenizer(prep.model, tmp)
        llm = write_llm(prep, tmp, llm_runtime)
        lm = write_lm(prep, tmp)
        hearing = write_hearing(prep, tmp)
        try:
            text_llm = write_text_llm(prep.model.cfg.text_llm, prep.model.cfg.resolve, tmp)
        except TextLlmExportError as e:
            raise ExportError(str(e)) from None
        encoder_file = write_int8_encoder(tmp) if quantize == "int8" else FP32_ENCODER
        manifest = write_manifest(tmp, replace(describe(prep, encoder_file, quantize, llm), lm=lm, hearing=hearing,
                                               text_llm=text_llm))
        served = verify(tmp, prep)
        manifest = replace(manifest, verification=Verification(
            inputs=[e.id for e in prep.examples], encoder_max_abs_diff=encoder_diff, greedy_tokens_identical=True))
        if quantize == "int8":
            manifest = replace(manifest, quantization_report=int8_report(served, prep, eval_manifests))
        write_json(tmp / MANIFEST, manifest.to_json())
    return manifest


def check_request(checkpoint: Path, out: Path, quantize: str | None, llm_runtime: str, force: bool) -> dict[str, Any]:
    """Refuse what cannot be exported before any work; returns the checkpoint's metadata."""
    if out.exists() and not force:
        raise ExportError(f"{out} exists; choose another --out or pass --force to replace it")
    meta = read_meta(checkpoint)
    if not takes_speech(checkpoint):
        raise ExportError(f"{checkpoint}: this {meta['stage']} checkpoint has no trained projector: it cannot "
                          "take speech. Export a projector or joint checkpoint, or any stage of a CTC bridge recipe.")
    if llm_runtime not in ("torch", "onnx"):
        raise ExportError(f"--llm must be torch or onnx, got {llm_runtime!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize must be int8, got {quantize!r}")
    return meta


def prepare(checkpoint: Path, meta: dict[str, Any], manifests: Sequence[Path], n: int) -> Prepared:
    """Load the checkpoint, pick `n` verification inputs, and compute its reference embeddings and tokens."""
    import torch

    model = load_checkpoint(checkpoint)
    examples = _verification_examples(model, manifests, n)
    audios = [load_audio(e.audio, model.encoder.sample_rate) for e in examples]  # type: ignore[arg-type]
    features = [model.encoder.extract_features(a) for a in audios]
    instructions = [model.instruction(e) for e in examples]
    embeddings = torch_embeddings(model, features)
    settings = DecodeSettings.unguarded(model.cfg.prompt.max_new_tokens)
    tokens = [model.greedy(torch.from_numpy(e), i, settings).tokens
              for e, i in zip(embeddings, instructions, strict=True)]
    return Prepared(checkpoint, meta, model, examples, audios, features, instructions, embeddings, settings, tokens)


def _verification_examples(model: SpeechLLM, manifests: Sequence[Path], n: int) -> list[Example]:
    from tympan.training.trainer import resolve_manifest

    paths = list(manifests) or [resolve_manifest(model.cfg, m) for m in model.cfg.data.dev]
    if not paths:
        raise ExportError("no inputs to verify the export with: pass --verify-manifest (speech examples)")
    speech = [e for e in load_manifests(paths) if e.is_speech]
    if len(speech) < 2:
        raise ExportError(f"{', '.join(map(str, paths))}: need at least 2 speech examples to verify the export")
    chosen: list[Example] = []
    seen_audio: set[Path] = set()
    for e in speech:  # distinct recordings, various tasks
        if e.audio not in seen_audio:
            chosen.append(e)
            seen_audio.add(e.audio)  # type: ignore[arg-type]
        if len(chosen) == n:
            break
    return chosen


def write_encoder(prep: Prepared, tmp: Path) -> float:
    """encoder.onnx (encoder + projector), checked against PyTorch; returns the largest difference."""
    import onnxruntime as ort

    export_encoder(prep.model, tmp / FP32_ENCODER, prep.features)
    session = ort.InferenceSession(str(tmp / FP32_ENCODER), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feats, ref in zip(prep.features, prep.embeddings, strict=True):
        got, n, *_ = session.run(None, {"features": feats[None], "lengths": np.array([len(feats)], np.int64)})
        if int(n[0]) != ref.shape[0]:
            raise ExportError(f"ONNX encoder gives {int(n[0])} positions, PyTorch {ref.shape[0]}")
        worst = max(worst, float(np.abs(got[0, : ref.shape[0]] - ref).max()))
    if worst > ENCODER_TOLERANCE:
        raise ExportError(f"ONNX encoder differs from PyTorch by {worst:.2e} (limit {ENCODER_TOLERANCE:.0e})")
    return worst


def write_tokenizer(model: SpeechLLM, tmp: Path) -> None:
    model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if not (tmp / "tokenizer" / "tokenizer.json").is_file():
        raise ExportError("the tokenizer has no fast (tokenizer.json) form; the daemon needs one")


def write_llm(prep: Prepared, tmp: Path, runtime: str) -> Llm:
    """The LLM with LoRA folded into its weights (a copy: the checkpoint model stays unmerged), for `runtime`."""
    import copy

    merged = copy.deepcopy(prep.model.llm)
    if hasattr(merged, "merge_and_unload"):
        merged = merged.merge_and_unload()
    merged.eval()
    hidden_size = int(merged.config.hidden_size)
    merged_lora = "lora" in prep.meta["trained"]
    if runtime == "torch":
        merged.save_pretrained(str(tmp / "llm"))
        return Llm(runtime=runtime, merged_lora=merged_lora, hidden_size=hidden_size, dir="llm")
    from tympan.export.llm_graph import export_llm_onnx

    # Weights in one external file: the session maps them instead of copying (~300 MB less RSS).
    onnx = export_llm_onnx(merged, tmp / "llm_onnx", opset=OPSET, external_data=True)
    return Llm(runtime=runtime, merged_lora=merged_lora, hidden_size=hidden_size, dir="llm_onnx", onnx=onnx)


def write_lm(prep: Prepared, tmp: Path) -> LanguageModel | None:
    """The checkpoint's n-gram LM (`python -m tympan.training.ngram`), checked by loading it, if it has one."""
    src = prep.checkpoint / LM_FILE
    if not src.is_file():
        return None
    if prep.model.cfg.projector.kind != "ctc":
        raise ExportError(f"{src}: an n-gram LM is read by a CTC bridge's beam search; this checkpoint's "
                          f"projector is {prep.model.cfg.projector.kind!r}")
    try:
        lm = NgramLM.load(src)
    except LmError as e:
        raise ExportError(str(e)) from None
    shutil.copy(src, tmp / LM_FILE)
    s = lm.settings
    return LanguageModel(file=LM_FILE, order=lm.order, weight=s.weight, length_bonus=s.length_bonus, beam=s.beam)


HEARING_DIR = "hearing"


def write_hearing(prep: Prepared, tmp: Path) -> Hearing | None:
    """With hearing.kind "whisper": Whisper's CTranslate2 files copied into the bundle, and loaded from there to
    read a verification input (a file CTranslate2 cannot read stops the export, not the daemon)."""
    from tympan.runtime.whisper import HearingError, HearingSettings, WhisperHearing, model_files

    cfg = prep.model.cfg.hearing
    if cfg.kind != "whisper":
        return None
    source = _hearing_source(prep, cfg.checkpoint)
    try:
        files = model_files(source)
    except HearingError as e:
        raise ExportError(f"hearing.checkpoint = {cfg.checkpoint!r}: {e}") from None
    (tmp / HEARING_DIR).mkdir()
    for name in files:
        shutil.copy(source / name, tmp / HEARING_DIR / name)
    try:
        WhisperHearing(tmp / HEARING_DIR, HearingSettings(window_s=cfg.window_s, pad_s=cfg.pad_s)).hear(prep.audios[0])
    except HearingError as e:
        raise ExportError(str(e)) from None
    return Hearing(kind="whisper", dir=HEARING_DIR, source=cfg.checkpoint, window_s=cfg.window_s, pad_s=cfg.pad_s)


def _hearing_source(prep: Prepared, checkpoint: str) -> Path:
    from tympan.training.model.base_models import PREFIX, whisper_ct2_dir

    if checkpoint.startswith(PREFIX):
        return whisper_ct2_dir(checkpoint[len(PREFIX):])
    return prep.model.cfg.resolve(checkpoint)


def write_int8_encoder(tmp: Path) -> str:
    from tympan.export.quantize import quantize_int8

    quantize_int8(tmp / FP32_ENCODER, tmp / INT8_ENCODER)
    return INT8_ENCODER


def describe(prep: Prepared, encoder_file: str, quantize: str | None, llm: Llm) -> BundleManifest:
    """The manifest of the written files, before verification (`files` is filled in when it is written)."""
    import onnxruntime as ort

    model, cfg, meta = prep.model, prep.model.cfg, prep.meta
    return BundleManifest(
        tympan_version=__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source=Source(checkpoint=str(prep.checkpoint), stage=meta["stage"], step=meta["step"],
                      config=cfg.to_toml_dict()),
        audio=Audio(sample_rate=model.encoder.sample_rate, features=model.encoder.feature_params()),
        encoder=Encoder(
            file=encoder_file,
            fp32_file=FP32_ENCODER,
            kind=model.encoder.kind,
            layer=cfg.encoder.layer,
            max_seconds=cfg.encoder.max_seconds,
            frames_per_second=model.encoder.frames_per_second,
            output_rate_hz=model.encoder.frames_per_second / cfg.projector.frame_average,
            embedding_dim=int(prep.embeddings[0].shape[1]),
            bridge=cfg.projector.kind,
            inputs=INPUTS,
            outputs=outputs(model),
            quantization=quantize,
        ),
        llm=llm,
        prompt=Prompt(
            tokenizer="tokenizer/tokenizer.json",
            frame=PromptFrame(**model.prompts.frame()),
            instructions=model.prompts.templates,
            stop_ids=model.prompts.stop_ids,
            max_new_tokens=cfg.prompt.max_new_tokens,
        ),
        tasks=meta.get("tasks", {}),
        onnx=OnnxChecks(opset=OPSET, onnxruntime=ort.__version__, checked_providers=["CPUExecutionProvider"]),
        files={},
    )


def write_manifest(tmp: Path, manifest: BundleManifest) -> BundleManifest:
    """Every file of the bundle with its sha256 and size, then manifest.json; returns what was written."""
    files = {p.relative_to(tmp).as_posix(): FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
             for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = replace(manifest, files=files)
    write_json(tmp / MANIFEST, manifest.to_json())
    return manifest


def verify(tmp: Path, prep: Prepared) -> SpeechModel:
    """The finished files, loaded as the daemon loads them (the fp32 encoder), against the checkpoint: the same
    prompt tokens for every instruction and the same greedy tokens for every input. Returns the loaded model."""
    served = SpeechModel(load_bundle(tmp), encoder_file=FP32_ENCODER)
    _check_prompts(prep.model, served)
    mismatches = []
    for example, audio, instruction, ref in zip(prep.examples, prep.audios, prep.instructions, prep.tokens,
                                                strict=True):
        (speech,) = served.embed_audio([audio])
        got = served.decode(speech, instruction, prep.settings).tokens
        if got != ref:
            mismatches.append(f"{example.id}: checkpoint {ref[:12]}, bundle {got[:12]}")
    if mismatches:
        raise ExportError("the bundle's greedy output differs from the checkpoint's: " + "; ".join(mismatches))
    return served


def _check_prompts(model: SpeechLLM, served: SpeechModel) -> None:
    """The daemon's prompt tokens (tokenizers + frame strings) equal training's, for every instruction."""
    for task, langs in model.prompts.templates.items():
        for lang in langs:
            instruction = model.prompts.instruction(task, lang, "What is said?" if task == "sqa" else None)
            ids = model.prompts.prompt(instruction)
            if served.prompts.ids(instruction) != (ids.prefix, ids.suffix):
                raise ExportError(f"prompt tokens for {task}/{lang} differ between training and the bundle")


def int8_report(served: SpeechModel, prep: Prepared, eval_manifests: Sequence[Path]) -> dict[str, Any]:
    """fp32 against int8 encoder: sizes, latency, and the decoded text (as the daemon decodes) on the
    verification inputs, or on `eval_manifests` when given."""
    from tympan.export.quantize import comparison_report
    from tympan.runtime.onnx_encoder import OnnxEncoder

    prompts = served.prompts
    items = [(a, prompts.instruction(e.task, e.tgt_lang, e.question), e.target)
             for e, a in zip(prep.examples, prep.audios, strict=True)]
    if eval_manifests:
        evals = [e for e in load_manifests(list(eval_manifests)) if e.is_speech]
        items = [(load_audio(e.audio, served.sample_rate),  # type: ignore[arg-type]
                  prompts.instruction(e.task, e.tgt_lang, e.question), e.target) for e in evals]
    bundle: Bundle = served.bundle
    encoders = {name: OnnxEncoder(bundle, file=name) for name in (FP32_ENCODER, INT8_ENCODER)}

    def encode(name: str, audio: np.ndarray) -> np.ndarray:
        return encoders[name]([audio])[0]

    def respond(name: str, audio: np.ndarray, instruction: str) -> str:
        return prompts.decode(served.decode(encode(name, audio), instruction).tokens)

    return comparison_report(bundle.path / FP32_ENCODER, bundle.path / INT8_ENCODER, encode, respond, items,
                             served.sample_rate)
