"""Pretrained parts given as local directories or as model ids in the local Hugging Face cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tympan.training.model.checkpoint import build_base, load_checkpoint
from tympan.training.model.encoder import EncoderLoadError, build_encoder
from tympan.training.model.llm import LLMLoadError
from tympan.training.recipe import EncoderConfig, LLMConfig, load_config, replace
from tympan.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def saved_parts(tmp_path_factory: pytest.TempPathFactory, toy_corpus: Path) -> dict[str, Path]:
    """A tiny Whisper checkpoint and a tiny Llama + tokenizer, saved as pretrained models are."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(5)
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=64, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[]))
    whisper.save_pretrained(str(root / "whisper"))
    tiny = load_config(CONFIGS / "tiny.toml")
    base = build_base(tiny, ["one two three", "eins zwei drei"])
    base.llm.save_pretrained(str(root / "llama"))
    base.tokenizer.save_pretrained(str(root / "llama"))
    return {"whisper": root / "whisper", "llama": root / "llama", "whisper_model": whisper}  # type: ignore[dict-item]


def test_whisper_encoder_loads_from_a_full_whisper_checkpoint(saved_parts) -> None:
    enc = build_encoder(EncoderConfig(kind="whisper", checkpoint=str(saved_parts["whisper"])), seed=123)
    reference = saved_parts["whisper_model"].model.encoder.state_dict()
    ours = enc.whisper.state_dict()
    assert ours.keys() == reference.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], atol=0, rtol=0, msg=k)


def _hub_cache(tmp_path: Path, repo_id: str, files: Path) -> Path:
    """Lay `files` out as the local HF hub cache holds a downloaded model."""
    hub = tmp_path / "hf" / "hub"
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return tmp_path / "hf"


def test_pretrained_parts_by_local_path_and_by_cached_model_id_train_and_reload(
    saved_parts, toy_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_home = _hub_cache(tmp_path, "tympan-test/tiny-llama", saved_parts["llama"])
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    tiny = load_config(CONFIGS / "tiny.toml")
    lines = [json.loads(x) for x in (toy_corpus / "train.jsonl").read_text().splitlines()][:8]
    for x in lines:
        if x.get("audio"):
            x["audio"] = str(toy_corpus / x["audio"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    steps = {"steps": 2, "warmup_steps": 0}
    cfg = replace(
        tiny,
        encoder=replace(tiny.encoder, checkpoint=str(saved_parts["whisper"]), random=None),
        llm=LLMConfig(checkpoint="tympan-test/tiny-llama"),
        data=replace(tiny.data, train=[str(manifest)], dev=[]),
        train=replace(tiny.train, batch_size=4, projector=replace(tiny.train.projector, **steps),
                      lora=replace(tiny.train.lora, **steps), joint=replace(tiny.train.joint, **steps)),
    )
    outcomes = Trainer(cfg, tmp_path / "run", show_progress=False).run(["projector", "lora", "joint"])
    final = outcomes[-1].final
    assert final is not None
    # Pretrained weights and tokenizer are referenced, not copied.
    assert sorted(p.name for p in (final / "base").iterdir()) == ["parts.json"]
    model = load_checkpoint(final)
    assert model.llm.get_base_model().config.hidden_size == 64
    # An id that is not in the local cache is a clear error, never a download.
    with pytest.raises(LLMLoadError, match=r"cannot load llm\.checkpoint = 'tympan-test/absent'"):
        build_base(replace(cfg, llm=LLMConfig(checkpoint="tympan-test/absent")))
    with pytest.raises(EncoderLoadError, match=r"cannot load encoder\.checkpoint = 'tympan-test/absent'"):
        build_encoder(replace(cfg.encoder, checkpoint="tympan-test/absent"))


def test_a_base_built_for_other_settings_is_not_reused(tiny_cfg, toy_corpus: Path, tmp_path: Path) -> None:
    from tympan.training.trainer import TrainError

    manifest = toy_corpus / "dev.jsonl"
    cfg = replace(tiny_cfg, data=replace(tiny_cfg.data, train=[str(manifest)], dev=[]))
    Trainer(cfg, tmp_path / "run", show_progress=False)
    wider = replace(cfg, llm=replace(cfg.llm, random=replace(cfg.llm.random, hidden_size=128)))
    with pytest.raises(TrainError, match=r"llm.random.hidden_size = 64 there, 128 in this config"):
        Trainer(wider, tmp_path / "run", show_progress=False)
