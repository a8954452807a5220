"""`tympan export`: a training checkpoint -> a verified serving bundle.

BUNDLE/
  manifest.json     format, versions, source, files (sha256, size), audio and feature
                    parameters, encoder, LLM runtime, prompt frame and instructions, tasks,
                    the checks run at export
  encoder.onnx      features -> LLM input embeddings (encoder + projector), fp32
  encoder.int8.onnx with --quantize int8 (then the one the bundle serves)
  llm_onnx/         the merged LLM (LoRA folded in) as one ONNX graph for prefill and decode
                    (KV cache), its weights, the embedding table   [--llm onnx, the default]
  llm/              the merged LLM in safetensors, for PyTorch       [--llm torch]
  tokenizer/        tokenizer.json and friends

The bundle is built in a temporary directory beside OUT and renamed at the end, so an
interrupted export never leaves a directory that looks complete. Verification runs on the
finished files: the ONNX encoder against PyTorch (max abs diff <= 1e-4 in fp32), and the
bundle's greedy output against the unmerged checkpoint's, token for token.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan import __version__
from tympan.atomic import atomic_directory
from tympan.audio import load_audio
from tympan.errors import TympanError
from tympan.export.encoder_graph import INPUTS, OPSET, OUTPUTS, export_encoder, torch_embeddings
from tympan.manifest import Example, load_manifests
from tympan.runtime.bundle import FORMAT, MANIFEST, load_bundle, sha256_file
from tympan.training.model.checkpoint import load_checkpoint, read_meta
from tympan.training.model.speech_llm import SpeechLLM

ENCODER_TOLERANCE = 1e-4


class ExportError(TympanError, RuntimeError):
    """The export could not be made or did not pass its checks."""


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


def _merged_llm(model: SpeechLLM):
    """The LLM with LoRA folded into its weights (a copy: the checkpoint model stays unmerged)."""
    import copy

    llm = copy.deepcopy(model.llm)
    if hasattr(llm, "merge_and_unload"):
        llm = llm.merge_and_unload()
    return llm.eval()


def _files(root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


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
) -> dict[str, Any]:
    import onnxruntime as ort

    from tympan.runtime.speech_model import SpeechModel

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} exists; choose another --out or pass --force to replace it")
    meta = read_meta(checkpoint)
    if "projector" not in meta["trained"]:
        raise ExportError(f"{checkpoint}: this {meta['stage']} checkpoint has no trained projector: it cannot "
                          "take speech. Export a projector or joint checkpoint.")
    if llm_runtime not in ("torch", "onnx"):
        raise ExportError(f"--llm must be torch or onnx, got {llm_runtime!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize must be int8, got {quantize!r}")
    model = load_checkpoint(checkpoint)
    examples = _verification_examples(model, verify_manifests, verify_count)
    audios = [load_audio(e.audio, model.encoder.sample_rate) for e in examples]  # type: ignore[arg-type]
    features = [model.encoder.extract_features(a) for a in audios]
    instructions = [model.instruction(e) for e in examples]

    # The reference: the unmerged checkpoint's greedy tokens, from PyTorch embeddings.
    reference_embeds = torch_embeddings(model, features)
    import torch

    reference_tokens = [model.generate([torch.from_numpy(e)], [i])[0]
                        for e, i in zip(reference_embeds, instructions, strict=True)]

    with atomic_directory(out) as tmp:
        # 1. Encoder + projector.
        export_encoder(model, tmp / "encoder.onnx", features)
        session = ort.InferenceSession(str(tmp / "encoder.onnx"), providers=["CPUExecutionProvider"])
        worst = 0.0
        for feats, ref in zip(features, reference_embeds, strict=True):
            got, n = session.run(None, {"features": feats[None], "lengths": np.array([len(feats)], np.int64)})
            if int(n[0]) != ref.shape[0]:
                raise ExportError(f"ONNX encoder gives {int(n[0])} positions, PyTorch {ref.shape[0]}")
            worst = max(worst, float(np.abs(got[0, : ref.shape[0]] - ref).max()))
        if worst > ENCODER_TOLERANCE:
            raise ExportError(f"ONNX encoder differs from PyTorch by {worst:.2e} (limit {ENCODER_TOLERANCE:.0e})")

        # 2. Tokenizer and LLM.
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if not (tmp / "tokenizer" / "tokenizer.json").is_file():
            raise ExportError("the tokenizer has no fast (tokenizer.json) form; the daemon needs one")
        merged = _merged_llm(model)
        llm_meta: dict[str, Any] = {"runtime": llm_runtime, "merged_lora": "lora" in meta["trained"],
                                    "hidden_size": int(merged.config.hidden_size)}
        if llm_runtime == "torch":
            merged.save_pretrained(str(tmp / "llm"))
            llm_meta["dir"] = "llm"
        else:
            from tympan.export.llm_graph import export_llm_onnx

            llm_meta["dir"] = "llm_onnx"
            # Weights in one external file: the session maps them instead of copying (~300 MB less RSS).
            llm_meta["onnx"] = export_llm_onnx(merged, tmp / "llm_onnx", opset=OPSET, external_data=True)
        del merged

        encoder_file = "encoder.onnx"
        if quantize == "int8":
            from tympan.export.quantize import quantize_int8

            quantize_int8(tmp / "encoder.onnx", tmp / "encoder.int8.onnx")
            encoder_file = "encoder.int8.onnx"

        cfg = model.cfg
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "tympan_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": {"checkpoint": str(checkpoint), "stage": meta["stage"], "step": meta["step"],
                       "config": cfg.to_toml_dict()},
            "audio": {"sample_rate": model.encoder.sample_rate, "features": model.encoder.feature_params()},
            "encoder": {
                "file": encoder_file,
                "fp32_file": "encoder.onnx",
                "kind": model.encoder.kind,
                "layer": cfg.encoder.layer,
                "max_seconds": cfg.encoder.max_seconds,
                "frames_per_second": model.encoder.frames_per_second,
                "output_rate_hz": model.encoder.frames_per_second / cfg.projector.frame_average,
                "embedding_dim": int(reference_embeds[0].shape[1]),
                "inputs": INPUTS,
                "outputs": OUTPUTS,
                "quantization": quantize,
            },
            "llm": llm_meta,
            "prompt": {
                "tokenizer": "tokenizer/tokenizer.json",
                "frame": model.prompts.frame(),
                "instructions": model.prompts.templates,
                "stop_ids": model.prompts.stop_ids,
                "max_new_tokens": cfg.prompt.max_new_tokens,
            },
            "tasks": meta.get("tasks", {}),
            "onnx": {"opset": OPSET, "onnxruntime": ort.__version__, "checked_providers": ["CPUExecutionProvider"]},
        }
        manifest["files"] = _files(tmp)
        _write_json(tmp / MANIFEST, manifest)

        # 3. The finished files, loaded as the daemon loads them, against the checkpoint.
        bundle = load_bundle(tmp)
        served = SpeechModel(bundle, encoder_file="encoder.onnx")
        _check_prompts(model, served)
        mismatches = []
        for i, (audio, instruction, ref) in enumerate(zip(audios, instructions, reference_tokens, strict=True)):
            (speech,) = served.embed_audio([audio])
            got = list(served.generate(speech, instruction))
            if got != ref:
                mismatches.append(f"{examples[i].id}: checkpoint {ref[:12]}, bundle {got[:12]}")
        if mismatches:
            raise ExportError("the bundle's greedy output differs from the checkpoint's: " + "; ".join(mismatches))
        manifest["verification"] = {"inputs": [e.id for e in examples], "encoder_max_abs_diff": worst,
                                    "greedy_tokens_identical": True}
        if quantize == "int8":
            manifest["quantization_report"] = _int8_report(bundle, served, examples, audios, eval_manifests)
        _write_json(tmp / MANIFEST, manifest)
    return manifest


def _check_prompts(model: SpeechLLM, served) -> None:
    """The daemon's prompt tokens (tokenizers + frame strings) equal training's, for every instruction."""
    for task, langs in model.prompts.templates.items():
        for lang in langs:
            instruction = model.prompts.instruction(task, lang, "What is said?" if task == "sqa" else None)
            ids = model.prompts.prompt(instruction)
            if served.prompts.ids(instruction) != (ids.prefix, ids.suffix):
                raise ExportError(f"prompt tokens for {task}/{lang} differ between training and the bundle")


def _int8_report(bundle, served, examples, audios, eval_manifests) -> dict[str, Any]:
    from tympan.export.quantize import comparison_report
    from tympan.runtime.onnx_encoder import OnnxEncoder

    items = [(a, served.prompts.instruction(e.task, e.tgt_lang, e.question), e.target)
             for e, a in zip(examples, audios, strict=True)]
    if eval_manifests:
        evals = [e for e in load_manifests(list(eval_manifests)) if e.is_speech]
        items = [(load_audio(e.audio, served.sample_rate), served.prompts.instruction(e.task, e.tgt_lang, e.question),
                  e.target) for e in evals]
    encoders = {name: OnnxEncoder(bundle, file=name) for name in ("encoder.onnx", "encoder.int8.onnx")}

    def encode(name: str, audio: np.ndarray) -> np.ndarray:
        return encoders[name]([audio])[0]

    def respond(name: str, audio: np.ndarray, instruction: str) -> str:
        return served.prompts.decode(list(served.generate(encode(name, audio), instruction)))

    return comparison_report(bundle.path / "encoder.onnx", bundle.path / "encoder.int8.onnx", encode, respond,
                             items, served.sample_rate)
