"""Export benchmark: encoder + projector latency (PyTorch, ONNX fp32, ONNX int8) for 2, 5 and 15 s
of audio, and LLM greedy decoding speed (PyTorch vs ONNX), measured side by side in one run.

    .venv/bin/python benchmarks/export.py [--config configs/bench-default-shapes.toml] [--threads 2]

It builds a checkpoint from the config (random projector and LoRA: speed does not depend on the
weights), exports it twice (torch LLM + int8 encoder; ONNX LLM), and prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "bench-default-shapes.toml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--work", type=Path, help="keep the checkpoint and bundles here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tympan.export.bundle import export_bundle
    from tympan.export.encoder_graph import torch_embeddings
    from tympan.runtime.bundle import load_bundle
    from tympan.runtime.decode import DecodeSettings, greedy_decode
    from tympan.runtime.llm import load_llm
    from tympan.runtime.onnx_encoder import OnnxEncoder
    from tympan.training.model.checkpoint import assemble_model, build_base, save_base, save_checkpoint
    from tympan.training.recipe import load_config
    from tympan.training.trainer import resolve_manifest

    work = args.work or Path(tempfile.mkdtemp(prefix="tympan-bench-"))
    os.environ.setdefault("TYMPAN_HOME", str(work / "home"))
    cfg = load_config(args.config)
    texts = [line for m in cfg.data.train for line in resolve_manifest(cfg, m).read_text().splitlines()]
    base = build_base(cfg, texts)
    save_base(work / "base", cfg, base)
    model = assemble_model(cfg, base, lora=True).eval()
    ckpt = work / "ckpt"
    save_checkpoint(ckpt, model, stage="joint", step=0, trained=["projector", "lora"], base_dir=work / "base")
    t0 = time.perf_counter()
    export_bundle(ckpt, work / "bundle-torch", quantize="int8", llm_runtime="torch", force=True)
    t_export = time.perf_counter() - t0
    export_bundle(ckpt, work / "bundle-onnx", llm_runtime="onnx", force=True)

    bundle = load_bundle(work / "bundle-torch")
    fp32 = OnnxEncoder(bundle, threads=args.threads, file="encoder.onnx")
    int8 = OnnxEncoder(bundle, threads=args.threads, file="encoder.int8.onnx")
    rng = np.random.default_rng(0)
    print(f"config {args.config.name}; {args.threads} threads; export with int8 took {t_export:.1f} s")
    print(f"encoder.onnx {size_mb(bundle, 'encoder.onnx')}, encoder.int8.onnx {size_mb(bundle, 'encoder.int8.onnx')}")
    print()
    print("| audio | features (numpy) ms | PyTorch ms | ONNX fp32 ms | ONNX int8 ms |")
    print("|---|---|---|---|---|")
    for seconds in (2, 5, 15):
        audio = rng.normal(0, 0.1, seconds * 16000).astype(np.float32)
        feats = [model.encoder.extract_features(audio)]
        inputs = {"features": feats[0][None], "lengths": np.array([len(feats[0])], dtype=np.int64)}
        fe = median_ms(lambda x=audio: model.encoder.extract_features(x), args.repeats)
        pt = median_ms(lambda f=feats: torch_embeddings(model, f), args.repeats)
        a = median_ms(lambda i=inputs: fp32.session.run(None, i), args.repeats)
        b = median_ms(lambda i=inputs: int8.session.run(None, i), args.repeats)
        print(f"| {seconds} s | {fe:.1f} | {pt:.1f} | {a:.1f} | {b:.1f} |")
    print("(encoder + projector from features; feature extraction is the same numpy code on every path)")
    print()

    prompt = rng.normal(0, 0.02, (60, model.llm.get_input_embeddings().weight.shape[1])).astype(np.float32)
    print(f"| LLM runtime | greedy tokens/s ({args.new_tokens} new tokens after a 60-position prompt) |")
    print("|---|---|")
    for name in ("bundle-torch", "bundle-onnx"):
        llm = load_llm(load_bundle(work / name), threads=args.threads)
        def run(llm=llm) -> int:
            # No stop ids and no loop guard: time exactly new_tokens steps.
            return len(greedy_decode(llm, prompt, [], DecodeSettings.unguarded(args.new_tokens)).tokens)

        ms = median_ms(run, max(2, args.repeats // 2))
        print(f"| {load_bundle(work / name).manifest.llm.runtime} | {args.new_tokens / ms * 1000:.1f} |")
    return 0


def size_mb(bundle, name: str) -> str:
    return f"{bundle.file(name).stat().st_size / 1e6:.1f} MB"


if __name__ == "__main__":
    sys.exit(main())
