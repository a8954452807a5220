"""A serving bundle on disk: its manifest, checked before anything is loaded.

BUNDLE/manifest.json lists every file with its sha256 and size; a bundle whose files are
missing, changed or truncated, or whose format this version does not know, is refused
with a message that names the file and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tympan.config import tympan_home
from tympan.errors import TympanError

FORMAT = 1
MANIFEST = "manifest.json"


class BundleError(TympanError, ValueError):
    """The bundle is missing, incomplete, corrupt or of an unknown format."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name} is not part of this bundle")
        return self.path / name

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["audio"]["sample_rate"])

    @property
    def tasks(self) -> dict[str, list[str]]:
        return self.manifest["tasks"]


REQUIRED = ("format", "tympan_version", "files", "audio", "encoder", "llm", "prompt", "tasks")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle: format version, every listed file present with its size and sha256."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: bundle directory not found")
    if not manifest_file.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not a bundle, or an export that did not finish")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_file}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_file}: expected a JSON object")
    version = manifest.get("format")
    if version != FORMAT:
        raise BundleError(f"{path}: bundle format {version!r}; this tympan reads format {FORMAT}. "
                          "Export the checkpoint again with this version.")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_file}: missing key {missing[0]!r}")
    for name, meta in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != meta["size"]:
            raise BundleError(
                f"{path}: {name} is {size} bytes, the manifest says {meta['size']} (truncated or replaced)"
            )
        if verify and sha256_file(file) != meta["sha256"]:
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


def default_bundle() -> Path:
    """The default bundle, built first if missing, in another process: serving never imports training."""
    path = default_bundle_path()
    if not (path / "manifest.json").is_file():
        print(f"building the default bundle in {path} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "tympan", "export", "--default"], check=True,
                       stdout=subprocess.DEVNULL)
    return path
