"""`tympan export`: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tympan.errors import TympanError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="turn a training checkpoint into a verified serving bundle",
                       description="Merge LoRA, export encoder + projector to ONNX, verify, write a bundle.")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint directory (e.g. RUN/joint/final)")
    p.add_argument("--out", type=Path, help="the bundle directory to create")
    p.add_argument("--quantize", choices=["int8"], help="also write an int8 encoder and serve it (with a report)")
    p.add_argument("--llm", choices=["torch", "onnx"], default="onnx",
                   help="LLM runtime of the bundle (onnx: measured 2.3x faster than torch, see docs/benchmarks.md)")
    p.add_argument("--verify-manifest", type=Path, action="append", default=[], metavar="MANIFEST",
                   help="speech examples to verify with (default: the checkpoint config's dev manifests)")
    p.add_argument("--eval-manifest", type=Path, action="append", default=[], metavar="MANIFEST",
                   help="with --quantize: examples to measure the accuracy change on")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--default", action="store_true",
                   help="build the default bundle if it is missing (ignores the other options)")
    p.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    if args.default:
        from tympan.export.default import ensure_default_bundle

        print(ensure_default_bundle())
        return 0
    if args.checkpoint is None or args.out is None:
        raise TympanError("--checkpoint and --out are required (or --default)")
    from tympan.export.bundle import export_bundle

    manifest = export_bundle(args.checkpoint, args.out, quantize=args.quantize, llm_runtime=args.llm,
                             verify_manifests=args.verify_manifest, eval_manifests=args.eval_manifest,
                             force=args.force)
    check = manifest.verification
    assert check is not None  # export_bundle verifies, or raises
    print(f"bundle {args.out}: encoder {manifest.encoder.file}, LLM runtime {manifest.llm.runtime}; "
          f"verified on {len(check.inputs)} inputs (encoder max |diff| {check.encoder_max_abs_diff:.1e}, "
          "greedy tokens identical)")
    if manifest.quantization_report is not None:
        print("int8 report:", json.dumps(manifest.quantization_report, indent=2))
    return 0
