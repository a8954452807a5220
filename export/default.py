"""The default bundle, built on first use: until a trained default model ships, the tiny one."""

from __future__ import annotations

from pathlib import Path

from tympan.config import tympan_home

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"


def default_bundle_path() -> Path:
    return tympan_home() / "bundles" / "default"


def ensure_default_bundle() -> Path:
    """Train the tiny config on the toy corpus (resumable) and export it, unless already there."""
    from tympan.daemon.bundle import MANIFEST

    out = default_bundle_path()
    if (out / MANIFEST).is_file():
        return out
    from tympan.training.config import load_config
    from tympan.training.trainer import train

    from .bundle import export_bundle

    run = tympan_home() / "models" / "tiny"
    train(load_config(CONFIG), "all", run, show_progress=False)
    export_bundle(run / "joint" / "final", out, force=True)
    return out
