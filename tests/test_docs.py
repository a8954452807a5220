"""The front door keeps its promises: the README's and docs/protocols.md's snippets run against a real daemon,
links point at files that exist, the README stays short, and every command's --help names its page.

A snippet is a fenced block whose info string is `python` or `sh`; it runs as written against `tympan serve` on the
tiny test model at the default address (127.0.0.1:8765), in a directory holding `speech.wav` (a human recording),
with `bin/tympan` meaning this environment's `python -m tympan` (bin/tympan would check the set-up first).
Blocks fenced `bash`, `console` or `text` are shown, not run: the set-up commands, and clients that need
something this machine does not run for them (Home Assistant, a vosk client binary).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, alsa_speech, silence, write_wav

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("model.md", "protocols.md", "operations.md", "training.md", "benchmarks.md", "architecture.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
PORT = 8765  # the daemon's default: the snippets say so


def snippets(path: Path) -> list[tuple[str, str]]:
    """(language, code) of the blocks of `path` that run."""
    return [(lang, code) for lang, code in FENCE.findall(path.read_text(encoding="utf-8")) if lang in ("python", "sh")]


def test_the_readme_is_short_and_every_docs_page_is_there() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the detail belongs in docs/"
    for page in PAGES:
        assert (ROOT / "docs" / page).is_file(), page


@pytest.mark.parametrize("path", ["README.md", *[f"docs/{p}" for p in PAGES]])
def test_relative_links_point_at_files_that_exist(path: str) -> None:
    page = ROOT / path
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        assert (page.parent / target).exists(), f"{path}: link to {target}, which does not exist"


def test_every_command_names_its_page() -> None:
    from tympan.cli import build_parser

    parser = build_parser()
    assert "docs/" in (parser.epilog or "")
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():  # type: ignore[attr-defined]
        pages = re.findall(r"docs/[\w.]+\.md", command.epilog or "")
        assert pages, f"tympan {name} --help names no docs page"
        assert all((ROOT / p).is_file() for p in pages), (name, pages)


@pytest.fixture(scope="module")
def daemon(tympan_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from tympan.daemon.cli import default_bundle

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PORT))
        except OSError:
            pytest.fail(f"port {PORT} is taken: the snippets talk to a daemon at the default address; stop what "
                        "listens there and run again")
    work = tmp_path_factory.mktemp("docs-daemon")
    d = DaemonProcess(default_bundle(), work)
    d.port = PORT
    with d:
        yield d


@pytest.mark.parametrize("path", ["README.md", "docs/protocols.md"])
def test_the_snippets_run_against_a_daemon(path: str, daemon: DaemonProcess, tmp_path: Path) -> None:
    import numpy as np

    blocks = snippets(ROOT / path)
    assert blocks, f"{path} has no runnable snippet"
    write_wav(tmp_path / "speech.wav", np.concatenate([silence(0.3), alsa_speech("Front_Center"), silence(1.0)]))
    for lang, code in blocks:
        if lang == "sh":
            code = code.replace("bin/tympan ", f"{sys.executable} -m tympan ")
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            cmd = [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{path}: this {lang} snippet failed:\n{code}\n--- stderr:\n{done.stderr[-2000:]}"
