"""A serving bundle on disk, checked before anything is loaded.

BUNDLE/manifest.json (`tympan.runtime.bundle_manifest.BundleManifest`) lists every file with its sha256 and
size; a bundle whose files are missing, changed or truncated, or whose format this version does not know, is
refused with a message that names the file and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tympan.checksum import sha256_file
from tympan.config import tympan_home
from tympan.errors import TympanError
from tympan.runtime.bundle_manifest import FORMAT, MANIFEST, BundleError, BundleManifest


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: BundleManifest

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"{self.path}: {name} is not part of this bundle")
        return self.path / name

    @property
    def sample_rate(self) -> int:
        return self.manifest.audio.sample_rate

    @property
    def tasks(self) -> dict[str, list[str]]:
        return self.manifest.tasks


def read_manifest(path: Path) -> BundleManifest:
    """The manifest of the bundle at `path`, parsed and validated; the files are not checked."""
    manifest_file = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: bundle directory not found")
    if not manifest_file.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not a bundle, or an export that did not finish")
    try:
        data = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_file}: not valid JSON ({e})") from None
    return BundleManifest.from_json(data, manifest_file)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle: format version, every listed file present with its size and sha256."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, entry in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != entry.size:
            raise BundleError(
                f"{path}: {name} is {size} bytes, the manifest says {entry.size} (truncated or replaced)"
            )
        if verify and sha256_file(file) != entry.sha256:
            raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (corrupt or modified)")
    return Bundle(path, manifest)


# The shipped models a bundle can be built from: `TYMPAN_MODEL` picks one, built into $TYMPAN_HOME/bundles/<name>.
MODELS = ("default", "tiny")


def default_model() -> str:
    name = os.environ.get("TYMPAN_MODEL", "default") or "default"
    if name not in MODELS:
        raise TympanError(f"TYMPAN_MODEL = {name!r}: known models are {', '.join(MODELS)}")
    return name


def default_bundle_path(model: str | None = None) -> Path:
    return tympan_home() / "bundles" / (model or default_model())


def bundle_format(path: Path) -> object:
    """The format number a bundle's manifest declares (None when there is no readable manifest)."""
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


# The repository's shipped models (models/<name>: trained weights and config), and the file in a default bundle
# that says which shipped weights it was built from.
SHIPPED_MODELS = Path(__file__).resolve().parent.parent.parent / "models"
# Files kept beside a shipped model that are not the model: the learning curve (training/curve.py) grows
# without the weights changing, and a new ship keeps it (training/ship.py).
BESIDE_MODEL = ("curve.jsonl",)
BUILT_FROM = "built-from.sha256"


def shipped_fingerprint(model: str) -> str | None:
    """One sha256 over a shipped model's files (None for a model trained at first use, as "tiny" is): a
    default bundle built from other weights is rebuilt, so a new shipped model reaches every machine."""
    root = SHIPPED_MODELS / model
    if not (root / "checkpoint.json").is_file():
        return None
    lines = [f"{p.relative_to(root).as_posix()} {sha256_file(p)}" for p in sorted(root.rglob("*"))
             if p.is_file() and p.name not in BESIDE_MODEL]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def is_current(path: Path, model: str) -> bool:
    """The default bundle at `path` is of this version's format and built from the shipped weights of `model`."""
    if bundle_format(path) != FORMAT:
        return False
    wanted = shipped_fingerprint(model)
    if wanted is None:
        return True
    try:
        return (path / BUILT_FROM).read_text(encoding="utf-8").strip() == wanted
    except OSError:
        return False


def default_bundle() -> Path:
    """The default bundle, built first if missing, of an older format or from other shipped weights, in
    another process: serving never imports training."""
    path = default_bundle_path()
    if not is_current(path, default_model()):
        print(f"building the default bundle in {path} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "tympan", "export", "--default"], check=True,
                       stdout=subprocess.DEVNULL)
    return path
