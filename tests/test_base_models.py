"""Base models from their PyPI packages: sha256 checks and conversion parity."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.training.model import base_models
from tympan.training.model.base_models import (
    BaseModelError,
    LlmPackage,
    PackagedFile,
    WhisperPackage,
    resolve,
    whisper_ct2_dir,
)
from tympan.training.model.encoder import build_encoder
from tympan.training.model.llm import load_pretrained
from tympan.training.recipe import EncoderConfig, LLMConfig


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    tone = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((180, 360, 540, 1200)))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.1 * tone * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_whisper_encoder_matches_ctranslate2() -> None:
    """The converted encoder gives CTranslate2's own encoder output on a full 30 s window."""
    import ctranslate2
    name = "whisper-tiny.en"
    encoder = build_encoder(EncoderConfig(kind="whisper", checkpoint=f"package:{name}"))
    feats = encoder.extract_features(_speechlike(30.0))
    assert feats.shape == (3000, 80)
    with torch.no_grad():
        ours, lengths = encoder(torch.from_numpy(feats)[None], torch.tensor([feats.shape[0]]))
    assert lengths.tolist() == [1500]
    model = ctranslate2.models.Whisper(str(whisper_ct2_dir(name)), intra_threads=2, compute_type="float32")
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.T[None])),
                                to_cpu=True))
    assert ref.shape == tuple(ours.shape)
    # fp16 weights computed in fp32 by both; the residual is accumulation order.
    assert np.abs(ours.numpy() - ref).max() < 5e-3 * np.abs(ref).max()


def test_whisper_base_joins_parts(tmp_path: Path) -> None:
    d = whisper_ct2_dir("whisper-base")
    parts = base_models.WHISPER["whisper-base"].parts
    assert (d / "model.bin").stat().st_size == sum(base_models.package_file(p, "").stat().st_size for p in parts)
    variables, meta = base_models.read_ct2(d / "model.bin")
    assert meta["spec"] == "WhisperSpec"
    assert base_models._encoder_layers(variables) == 6
    assert variables["encoder/layer_norm/gamma"].shape == (512,)


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: bool) -> None:
    """A copy of tiny.en's package on sys.path, optionally with one byte changed."""
    real = base_models.package_file(base_models.WHISPER["whisper-tiny.en"].parts[0], "")
    pkg = tmp_path / "fake_whisper_pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in real.parent.iterdir():
        shutil.copy(f, pkg / "model" / f.name)
    if corrupt:
        with (pkg / "model" / "model.bin").open("r+b") as fh:
            fh.seek(5000)
            byte = fh.read(1)
            fh.seek(5000)
            fh.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_whisper_pkg", None)
    original = base_models.WHISPER["whisper-tiny.en"]
    monkeypatch.setitem(base_models.WHISPER, "whisper-fake", WhisperPackage(
        pypi="fake-whisper-pkg==1",
        parts=(PackagedFile("fake_whisper_pkg", "model/model.bin", original.parts[0].sha256),),
        files=(),
    ))


def test_altered_package_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYMPAN_HOME", str(tmp_path / "home"))
    _fake_package(tmp_path, monkeypatch, corrupt=True)
    with pytest.raises(BaseModelError, match=r"sha256 .* does not match the pinned .*reinstall fake-whisper-pkg==1"):
        resolve("package:whisper-fake")
    # Nothing half-converted is left behind to be taken for a model later.
    assert not (tmp_path / "home" / "base" / "whisper-fake").exists()
    # The intact copy converts.
    _fake_package(tmp_path / "ok", monkeypatch, corrupt=False)
    assert (Path(resolve("package:whisper-fake")) / "model.safetensors").is_file()


def test_missing_and_unknown_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BaseModelError, match="unknown package model 'package:nope'"):
        resolve("package:nope")
    monkeypatch.setitem(base_models.WHISPER, "whisper-absent", WhisperPackage(
        pypi="absent-pkg==1", parts=(PackagedFile("absent_pkg_xyz", "model.bin", "0" * 64),), files=()))
    with pytest.raises(BaseModelError, match=r"'absent_pkg_xyz' is not installed: pip install absent-pkg==1"):
        resolve("package:whisper-absent")


def test_a_split_llm_package_is_joined_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An LLM whose GGUF comes in chunk packages: joined into the cache when the whole file's sha256 is the
    pinned one; another sha256 is refused, naming the packages, and leaves nothing that looks joined."""
    import hashlib

    for i, chunk in enumerate((b"gguf-", b"bytes")):
        pkg = tmp_path / "site" / f"chunky_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TYMPAN_HOME", str(tmp_path / "home"))
    parts = tuple(PackagedFile(f"chunky_part{i + 1}", f"data/m.gguf.part{i:02d}", "") for i in range(2))
    good = hashlib.sha256(b"gguf-bytes").hexdigest()
    monkeypatch.setitem(base_models.LLMS, "chunky", LlmPackage("chunky-part1 chunky-part2", parts, good))
    path = base_models.gguf_file("chunky")
    assert path.name == "m.gguf" and path.read_bytes() == b"gguf-bytes"
    monkeypatch.setitem(base_models.LLMS, "chunky2", LlmPackage("chunky-part1 chunky-part2", parts, "0" * 64))
    with pytest.raises(BaseModelError, match=r"does not match the pinned 0{64}: reinstall chunky-part1 chunky-part2"):
        base_models.gguf_file("chunky2")
    assert not (tmp_path / "home" / "base" / "chunky2-gguf").exists()


def test_smollm2_from_gguf_is_saved_losslessly() -> None:
    """The converted SmolLM2 gives the GGUF-loaded model's logits and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted, tok = load_pretrained(LLMConfig(checkpoint="package:smollm2-135m-instruct"))
    gguf = base_models.package_file(base_models.SMOLLM2, "")
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True,
                                                  dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == direct_tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                  tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tok(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        a, b = converted(ids).logits, direct(ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max().item() < 1e-4
    assert converted.num_parameters() == pytest.approx(134.5e6, rel=0.01)
