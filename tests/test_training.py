from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tympan.training.model.checkpoint import new_projector
from tympan.training.recipe import (
    LLMConfig,
    RandomEncoderConfig,
    RandomLLMConfig,
    Recipe,
    load_config,
    replace,
)
from tympan.training.trainer import Trainer, TrainError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _fixed_batch(toy: Path, tmp_path: Path, n: int = 4) -> Path:
    """A manifest of `n` toy utterances (ASR and ST, with transcripts): one fixed batch."""
    lines = [json.loads(x) for x in (toy / "train.jsonl").read_text().splitlines()]
    chosen = [x for x in lines if x.get("audio") and x["task"] in ("asr", "st")][:n]
    for x in chosen:
        x["audio"] = str(toy / x["audio"])
    p = tmp_path / "batch.jsonl"
    p.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in chosen))
    return p


def _cfg(cfg: Recipe, manifest: Path, steps: int, **train: object) -> Recipe:
    stage = {"steps": steps, "warmup_steps": 0}
    t = cfg.train
    return replace(
        cfg,
        data=replace(cfg.data, train=[str(manifest)], dev=[]),
        train=replace(
            t,
            **({"batch_size": 4, "log_every": 1, "save_every": 1000} | train),
            projector=replace(t.projector, **stage, lr=1e-2),
            lora=replace(t.lora, **stage, lr=1e-2),
            joint=replace(t.joint, **stage, lr=3e-3, lr_lora=3e-3),
        ),
    )


def _losses(out: Path, stage: str) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / stage / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)]


def test_each_stage_lowers_the_loss_on_a_fixed_batch(tiny_cfg, toy_corpus: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_cfg, _fixed_batch(toy_corpus, tmp_path), steps=30)
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    outcomes = trainer.run(["projector", "lora", "joint"])
    assert [o.final is not None for o in outcomes] == [True, True, True]
    for stage in ("projector", "lora", "joint"):
        losses = _losses(tmp_path / "run", stage)
        assert len(losses) == 30
        assert losses[-1] < 0.8 * losses[0], (stage, losses[0], losses[-1])
    # Joint starts where the two separate stages left off, not from scratch.
    assert _losses(tmp_path / "run", "joint")[0] < _losses(tmp_path / "run", "lora")[0]
    final = tmp_path / "run" / "joint" / "final"
    assert (final / "projector.safetensors").is_file() and (final / "adapter" / "adapter_config.json").is_file()
    meta = json.loads((final / "checkpoint.json").read_text())
    assert meta["trained"] == ["projector", "lora"] and meta["step"] == 30


def test_joint_trains_projector_and_lora_with_their_own_learning_rates(tiny_cfg, toy_corpus, tmp_path) -> None:
    cfg = _cfg(tiny_cfg, _fixed_batch(toy_corpus, tmp_path), steps=3)
    cfg = replace(cfg, train=replace(cfg.train, joint=replace(cfg.train.joint, lr=1e-3, lr_lora=5e-4)))
    Trainer(cfg, tmp_path / "run", show_progress=False).run(["projector", "lora", "joint"])
    first, second = (json.loads(x) for x in (tmp_path / "run" / "joint" / "log.jsonl").read_text().splitlines()[:2])
    assert (first["lr_projector"], first["lr_lora"]) == (pytest.approx(1e-3), pytest.approx(5e-4))
    # Cosine decay: step 2 of 3 runs at 0.75 of the peak.
    assert (second["lr_projector"], second["lr_lora"]) == (pytest.approx(7.5e-4), pytest.approx(3.75e-4))
    before = load_file(str(tmp_path / "run" / "projector" / "final" / "projector.safetensors"))
    after = load_file(str(tmp_path / "run" / "joint" / "final" / "projector.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    lora_before = load_file(str(tmp_path / "run" / "lora" / "final" / "adapter" / "adapter_model.safetensors"))
    lora_after = load_file(str(tmp_path / "run" / "joint" / "final" / "adapter" / "adapter_model.safetensors"))
    assert lora_before.keys() == lora_after.keys()
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)


def test_joint_trains_on_text_only_lines_only_with_text_lines_on(tiny_cfg, toy_corpus, tmp_path) -> None:
    speech = [json.loads(x) for x in _fixed_batch(toy_corpus, tmp_path).read_text().splitlines()]
    lines = [json.loads(x) for x in (toy_corpus / "train.jsonl").read_text().splitlines()]
    text_only = [x for x in lines if not x.get("audio")][:4]
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in speech + text_only))
    text_ids = {x["id"] for x in text_only}
    for text_lines in (True, False):
        cfg = _cfg(tiny_cfg, manifest, steps=1)
        cfg = replace(cfg, train=replace(cfg.train, joint=replace(cfg.train.joint, text_lines=text_lines)))
        trainer = Trainer(cfg, tmp_path / f"run-{text_lines}", show_progress=False)
        trainer.run(["projector", "lora"])  # the lora stage trains on the text-only lines either way
        run = trainer.setup("joint", {})
        # Two epochs of batches: one speech batch, its paired MT batch and, when on, one text batch each.
        seen = [e for _ in range(6) for e in next(run.stream).examples]
        used = {e.id for e in seen} & text_ids
        assert used == (text_ids if text_lines else set()), text_lines
        # Off, the only text batches left are the speech lines' transcripts (paired MT).
        assert all(e.is_speech or e.id.endswith("#text") for e in seen) != text_lines


def test_training_from_the_encoder_cache_gives_the_same_loss_as_from_audio(tiny_cfg, toy_corpus, tmp_path) -> None:
    manifest = _fixed_batch(toy_corpus, tmp_path)
    runs = {}
    for cached in (True, False):
        # The cache encodes one file at a time; from audio, the batch of 4 is encoded together.
        cfg = _cfg(tiny_cfg, manifest, steps=4, cache_encoder=cached, encode_batch_size=1)
        Trainer(cfg, tmp_path / f"run-{cached}", show_progress=False).run(["projector"])
        runs[cached] = _losses(tmp_path / f"run-{cached}", "projector")
    assert runs[True] == pytest.approx(runs[False], abs=1e-5)
    cache_dir = Path(__import__("os").environ["TYMPAN_HOME"]) / "cache" / "encoder"
    assert list(cache_dir.rglob("*.npy")), "the cached run wrote no cache entries"


def test_an_interrupted_run_resumes_to_exactly_the_same_weights(tiny_cfg, toy_corpus, tmp_path) -> None:
    manifest = _fixed_batch(toy_corpus, tmp_path)
    cfg = _cfg(tiny_cfg, manifest, steps=6, save_every=3)
    # Dropout and masking draw random numbers: the RNG state must be restored too.
    cfg = replace(cfg, projector=replace(cfg.projector, dropout=0.2),
                  train=replace(cfg.train, augment=replace(cfg.train.augment, time_masks=1, time_mask_max=3)))
    Trainer(cfg, tmp_path / "straight", show_progress=False).run(["projector", "lora", "joint"])
    for stage in ("projector", "lora", "joint"):  # stop each stage at step 3, then resume it
        (stopped,) = Trainer(cfg, tmp_path / "resumed", show_progress=False).run([stage], until_step=3)
        assert stopped.final is None and stopped.step == 3
        (done,) = Trainer(cfg, tmp_path / "resumed", show_progress=False).run([stage])
        assert done.final is not None and done.step == 6
    for part in ("projector.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(str(tmp_path / "straight" / "joint" / "final" / part))
        b = load_file(str(tmp_path / "resumed" / "joint" / "final" / part))
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    assert _losses(tmp_path / "straight", "joint") == _losses(tmp_path / "resumed", "joint")


def test_same_seed_same_run_and_another_seed_differs(tiny_cfg, toy_corpus, tmp_path) -> None:
    manifest = _fixed_batch(toy_corpus, tmp_path)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = replace(_cfg(tiny_cfg, manifest, steps=3), seed=seed)
        Trainer(cfg, tmp_path / name, show_progress=False).run(["projector"])
    w = {n: load_file(str(tmp_path / n / "projector" / "final" / "projector.safetensors")) for n in "abc"}
    assert all(torch.equal(w["a"][k], w["b"][k]) for k in w["a"])
    assert not all(torch.equal(w["a"][k], w["c"][k]) for k in w["a"])


def test_joint_without_finished_stages_is_refused(tiny_cfg, toy_corpus, tmp_path) -> None:
    cfg = _cfg(tiny_cfg, _fixed_batch(toy_corpus, tmp_path), steps=2)
    with pytest.raises(TrainError, match="joint stage needs a finished projector stage"):
        Trainer(cfg, tmp_path / "run", show_progress=False).run(["joint"])


def test_the_seed_architecture_builds_and_trains_at_tiny_width(toy_corpus, tmp_path) -> None:
    """configs/iwslt2025.toml with only the widths shrunk: same classes, same layer choice."""
    from transformers import LlamaForCausalLM

    seed = load_config(CONFIGS / "iwslt2025.toml")
    layers = seed.encoder.layer  # 24 Conformer layers, output of the 24th
    cfg = replace(
        seed,
        encoder=replace(seed.encoder, checkpoint="", random=RandomEncoderConfig(16, layers, 2, 32)),
        projector=replace(seed.projector, width=32, heads=4, ffn_size=64),
        llm=LLMConfig(random=RandomLLMConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, ffn_size=64)),
    )
    # The seed's bf16 autocast and gradient checkpointing stay on (they run on a CPU too).
    assert cfg.train.precision == "bf16" and cfg.train.gradient_checkpointing
    cfg = _cfg(cfg, _fixed_batch(toy_corpus, tmp_path, n=2), steps=2, grad_accum=2)
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2ConformerEncoder

    assert isinstance(trainer.base.encoder.conformer, SeamlessM4Tv2ConformerEncoder)
    assert len(trainer.base.encoder.conformer.layers) == 24 and trainer.base.encoder.final_norm
    assert isinstance(trainer.base.llm, LlamaForCausalLM)
    outcomes = trainer.run(["projector", "lora", "joint"])
    assert all(o.final is not None for o in outcomes)
    for stage in ("projector", "joint"):  # gradients reach the projector through checkpointed layers
        trained = load_file(str(tmp_path / "run" / stage / "final" / "projector.safetensors"))
        fresh = new_projector(cfg, trainer.base).state_dict()
        assert any(not torch.equal(trained[k], fresh[k]) for k in fresh), stage
    adapter = json.loads((tmp_path / "run" / "joint" / "final" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(seed.lora.target_modules)
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)


def test_cli_reports_a_bad_manifest_in_one_line(tmp_path: Path, capsys) -> None:
    from tympan.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "task": "asr"}\n')
    code = main(["train", "--config", str(CONFIGS / "tiny.toml"), "--out", str(tmp_path / "o"),
                 "--train", str(bad), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:1: missing field 'src_lang'" in err


def test_targets_longer_than_the_limit_are_refused_at_load(tiny_cfg, toy_corpus, tmp_path) -> None:
    manifest = _fixed_batch(toy_corpus, tmp_path)
    cfg = _cfg(tiny_cfg, manifest, steps=1)
    cfg = replace(cfg, data=replace(cfg.data, max_target_tokens=1))
    expected = rf"{manifest}:1: the target of .* tokens long, above data\.max_target_tokens = 1"
    with pytest.raises(TrainError, match=expected):
        Trainer(cfg, tmp_path / "run", show_progress=False)


def test_two_data_parallel_processes_match_one_process_with_accumulation(tiny_cfg, toy_corpus, tmp_path) -> None:
    """The same micro-batches, token-weighted: DDP over 2 CPU processes (gloo) equals grad_accum = 2."""
    import os
    import socket
    import subprocess
    import sys

    from tympan.config import dump_toml

    manifest = _fixed_batch(toy_corpus, tmp_path, n=8)
    for name, accum in (("ddp", 1), ("single", 2)):
        cfg = _cfg(tiny_cfg, manifest, steps=3, grad_accum=accum, batch_size=2, save_every=2)
        path = tmp_path / f"{name}.toml"
        path.write_text(dump_toml(cfg.to_toml_dict()))
    Trainer(load_config(tmp_path / "single.toml"), tmp_path / "single", show_progress=False).run(["projector", "lora"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # torchrun sets up the process group; Accelerate takes it from the environment (MULTI_CPU, gloo).
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(port), "-m", "tympan", "train", "--config", str(tmp_path / "ddp.toml"),
              "--out", str(tmp_path / "ddp"), "--no-progress"]
    for stage in ("projector", "lora"):
        done = subprocess.run([*launch, "--stage", stage], env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    for part in ("projector/final/projector.safetensors", "lora/final/adapter/adapter_model.safetensors"):
        a = load_file(str(tmp_path / "single" / part))
        b = load_file(str(tmp_path / "ddp" / part))
        for k in a:
            # Float sums in another order; Adam magnifies them where the true gradient is ~0
            # (attention key biases), hence not bit-exact.
            torch.testing.assert_close(b[k], a[k], atol=1e-3, rtol=1e-3, msg=k)
    assert _losses(tmp_path / "ddp", "projector") == pytest.approx(_losses(tmp_path / "single", "projector"), rel=1e-4)
    assert _losses(tmp_path / "ddp", "lora") == pytest.approx(_losses(tmp_path / "single", "lora"), rel=1e-4)
