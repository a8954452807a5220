"""The Debian data the text corpus is built from, found or fetched once.

- LibreOffice help in en/de/it/zh: the `libreoffice-help-*` packages are not installed system
  wide; `apt-get download` fetches each .deb into `ROOT/debs` (once) and `dpkg-deb -x` unpacks
  it into `ROOT/libreoffice/<lang>` (through a temporary directory, renamed when complete).
- Debian documentation packages with the same text in en/de/it/zh (`MANUALS`: the Debian
  Reference and the GIMP help), fetched and unpacked the same way into `ROOT/<family>/<lang>`.
- WordNet, fortunes and the bsdgames quiz files: installed by the project's set-up
  (`wordnet-base`, `fortunes`, `bsdgames`) under /usr/share; other places can be given.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tympan.atomic import atomic_directory
from tympan.errors import TympanError

# lang -> (Debian package, its folder under usr/share/libreoffice/help)
LIBREOFFICE_HELP = {
    "en": ("libreoffice-help-en-us", "en-US"),
    "de": ("libreoffice-help-de", "de"),
    "it": ("libreoffice-help-it", "it"),
    "zh": ("libreoffice-help-zh-cn", "zh-CN"),
}
# family -> lang -> (Debian package, the folder of its HTML pages inside the package)
MANUALS: dict[str, dict[str, tuple[str, str]]] = {
    "debian-reference": {
        "en": ("debian-reference-en", "usr/share/debian-reference"),
        "de": ("debian-reference-de", "usr/share/debian-reference"),
        "it": ("debian-reference-it", "usr/share/debian-reference"),
        "zh": ("debian-reference-zh-cn", "usr/share/debian-reference"),
    },
    "gimp-help": {
        "en": ("gimp-help-en", "usr/share/gimp/2.0/help/en"),
        "de": ("gimp-help-de", "usr/share/gimp/2.0/help/de"),
        "it": ("gimp-help-it", "usr/share/gimp/2.0/help/it"),
        "zh": ("gimp-help-zh-cn", "usr/share/gimp/2.0/help/zh_CN"),
    },
}
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")


class SourceError(TympanError, RuntimeError):
    """A source is missing; the message names the Debian package or file and how to get it."""


@dataclass(frozen=True)
class Sources:
    libreoffice: dict[str, Path]  # lang -> help root (the folder holding text/); empty when not used
    wordnet: Path | None  # folder of data.noun etc.; None when not used
    fortunes: Path | None  # folder of fortune cookie files
    quiz: Path | None  # folder of the quiz index and data files


def _download(package: str, debs: Path) -> Path:
    """The package's .deb in `debs`, fetched with `apt-get download` unless already there."""
    have = sorted(debs.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    if shutil.which("apt-get") is None:
        raise SourceError(
            f"{package}: apt-get not found; fetching it needs Debian's apt (or put {package}_*.deb into {debs})"
        )
    debs.mkdir(parents=True, exist_ok=True)
    # Download beside the final place, then move: an interrupted download leaves no .deb behind.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        result = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not got:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise SourceError(
                f"{package}: `apt-get download {package}` failed ({'; '.join(detail) or f'exit {result.returncode}'})."
                " The Debian mirror must be reachable and the package lists current (apt-get update)."
            )
        target = debs / got[0].name
        got[0].replace(target)
    return target


def _extract(deb: Path, dest: Path) -> None:
    """Unpack `deb` into `dest` unless `dest` already holds this very .deb's files."""
    stamp = dest / "SOURCE_DEB"
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == deb.name:
        return
    if shutil.which("dpkg-deb") is None:
        raise SourceError(f"{deb.name}: dpkg-deb not found (Debian package dpkg)")
    with atomic_directory(dest) as tmp:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise SourceError(f"{deb}: dpkg-deb -x failed: {result.stderr.strip()[-300:]}")
        (tmp / "SOURCE_DEB").write_text(deb.name + "\n", encoding="utf-8")


def libreoffice_help(root: Path, lang: str) -> Path:
    """The help root of one language, fetched and unpacked under `root` on first use."""
    if lang not in LIBREOFFICE_HELP:
        raise SourceError(f"no LibreOffice help package for {lang!r} (known: {', '.join(LIBREOFFICE_HELP)})")
    package, folder = LIBREOFFICE_HELP[lang]
    dest = root / "libreoffice" / lang
    _extract(_download(package, root / "debs"), dest)
    help_root = dest / "usr" / "share" / "libreoffice" / "help" / folder
    if not (help_root / "text").is_dir():
        raise SourceError(f"{package}: unpacked into {dest}, but {help_root}/text is missing")
    return help_root


def manual_roots(root: Path, family: str, langs: tuple[str, ...] = ("en", "de", "it", "zh")) -> dict[str, Path]:
    """lang -> the folder holding that language's HTML pages of one family of manuals.

    Each package is fetched into `root/debs` and unpacked into `root/<family>/<lang>` on first
    use. "libreoffice" gives the LibreOffice help roots (`libreoffice_help`).
    """
    if family == "libreoffice":
        return {lang: libreoffice_help(root, lang) for lang in langs}
    if family not in MANUALS:
        raise SourceError(f"no manuals family {family!r} (known: libreoffice, {', '.join(MANUALS)})")
    packages = MANUALS[family]
    unknown = [lang for lang in langs if lang not in packages]
    if unknown:
        raise SourceError(f"no {family} package for {', '.join(map(repr, unknown))} (known: {', '.join(packages)})")
    roots = {}
    for lang in langs:
        package, folder = packages[lang]
        dest = root / family / lang
        _extract(_download(package, root / "debs"), dest)
        pages = dest / folder
        if not pages.is_dir():
            raise SourceError(f"{package}: unpacked into {dest}, but {pages} is missing")
        if next(pages.glob("*.html"), None) is None:
            raise SourceError(f"{package}: unpacked into {dest}, but {pages} holds no .html pages")
        roots[lang] = pages
    return roots


def _require(path: Path | None, probe: str, package: str) -> Path | None:
    if path is None:
        return None
    if not (path / probe).exists():
        raise SourceError(
            f"{package}: {path / probe} not found (install the Debian package: apt-get install {package},"
            " or pass its folder)"
        )
    return path


def ensure_sources(
    root: Path,
    *,
    libreoffice_langs: tuple[str, ...] = ("en", "de", "it", "zh"),
    wordnet: Path | None = WORDNET_DIR,
    fortunes: Path | None = FORTUNES_DIR,
    quiz: Path | None = QUIZ_DIR,
) -> Sources:
    """Every source, ready to read; `root` is normally $TYMPAN_HOME/sources.

    A source passed as None (or no LibreOffice languages) is left out on purpose; one that is
    expected but missing raises SourceError.
    """
    if libreoffice_langs and "en" not in libreoffice_langs:
        raise SourceError("the LibreOffice help needs English ('en') to align the other languages to")
    return Sources(
        libreoffice={lang: libreoffice_help(root, lang) for lang in libreoffice_langs},
        wordnet=_require(wordnet, "data.noun", "wordnet-base"),
        fortunes=_require(fortunes, "fortunes", "fortunes"),
        quiz=_require(quiz, "index", "bsdgames"),
    )
