"""The CTC bridge (training/model/ctc.py), its targets (training/model/ctc_targets.py) and spoken forms."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from daemon_harness import alsa_speech

from tympan.spoken import ctc_target, spoken_form
from tympan.training.model.ctc import CtcBridge, bridge, ctc_loss_sum, greedy_ids, stack_frames
from tympan.training.model.ctc_targets import CtcVocab, build_vocab, targets, text_of
from tympan.training.model.speech_llm import pad_sequences
from tympan.training.recipe import ProjectorConfig, replace

V, H = 10, 6
BLANK = V


def onehot_logits(rows: list[list[int]], frames: int) -> torch.Tensor:
    """Logits that put (practically) all probability on one label per frame."""
    z = torch.full((len(rows), frames, V + 1), -30.0)
    for b, labels in enumerate(rows):
        for t, label in enumerate(labels):
            z[b, t, label] = 30.0
    return z


@pytest.fixture
def table() -> torch.Tensor:
    return torch.randn(V, H, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode", ["topk", "top1"])
def test_one_hot_posteriors_give_exactly_the_token_embeddings(table: torch.Tensor, mode: str) -> None:
    # a a _ a b b | padding: a blank between two a's makes two tokens (CTC's collapse rule).
    z = onehot_logits([[2, 2, BLANK, 2, 5, 5, 7, 7]], 8)
    out, n = bridge(z, torch.tensor([6]), table, 0.9, 8, mode)
    assert n.tolist() == [3]
    torch.testing.assert_close(out[0], torch.stack([table[2], table[2], table[5]]), atol=1e-5, rtol=0)


def test_batch_rows_are_independent_and_zero_padded(table: torch.Tensor) -> None:
    z = onehot_logits([[1, BLANK, 3, 4], [6, 6, BLANK, BLANK]], 4)
    out, n = bridge(z, torch.tensor([4, 4]), table, 0.9, 8, "topk")
    assert n.tolist() == [3, 1] and out.shape == (2, 3, H)
    torch.testing.assert_close(out[1, 0], table[6], atol=1e-5, rtol=0)
    assert torch.count_nonzero(out[1, 1:]) == 0


def test_all_blank_gives_no_segment(table: torch.Tensor) -> None:
    out, n = bridge(onehot_logits([[BLANK] * 5], 5), torch.tensor([5]), table, 0.9, 8, "topk")
    assert n.tolist() == [0] and out.shape == (1, 0, H)


def test_blank_threshold_and_soft_mixing(table: torch.Tensor) -> None:
    # One frame: blank 0.5, token 3 0.3, token 4 0.2. Kept under a 0.9 threshold, dropped under 0.4.
    p = torch.tensor([0.0] * V + [0.5])
    p[3], p[4] = 0.3, 0.2
    z = p.clamp(min=1e-12).log()[None, None]
    out, _ = bridge(z, torch.tensor([1]), table, 0.9, 2, "topk")
    torch.testing.assert_close(out[0, 0], 0.6 * table[3] + 0.4 * table[4], atol=1e-5, rtol=0)
    assert bridge(z, torch.tensor([1]), table, 0.4, 2, "topk")[1].tolist() == [0]


def test_greedy_ids_collapse_repeats_and_drop_blanks() -> None:
    z = onehot_logits([[2, 2, BLANK, 2, 5, BLANK, 5, 9]], 8)
    assert greedy_ids(z, torch.tensor([7])) == [[2, 2, 5, 5]]


def test_stack_frames_zeroes_padding_and_counts_frames() -> None:
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2) + 1
    stacked, n = stack_frames(x, torch.tensor([5, 2]), 2)
    assert stacked.shape == (2, 3, 4) and n.tolist() == [3, 1]
    assert torch.count_nonzero(stacked[1, 1:]) == 0
    assert stacked[0, 2].tolist() == [9.0, 10.0, 0.0, 0.0]


def tiny_bridge(vocab: int = V) -> CtcBridge:
    torch.manual_seed(0)
    cfg = ProjectorConfig(kind="ctc", frame_average=2, width=16, layers=1, heads=2, ffn_size=32, dropout=0.0)
    model = CtcBridge(cfg, 8, H, torch.arange(vocab))
    model.tie(torch.randn(vocab + 5, H))
    return model


def test_the_head_learns_a_fixed_batch() -> None:
    model = tiny_bridge()
    x, lengths = torch.randn(3, 24, 8), torch.tensor([24, 20, 16])
    labels = [[1, 2, 3], [4, 4], [5]]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        logits, frames = model.logits(x, lengths)
        loss = ctc_loss_sum(logits, frames, labels, model.blank_id) / 6
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    logits, frames = model.logits(x, lengths)
    assert greedy_ids(logits, frames) == labels


def test_a_warm_start_keeps_the_weights_and_matches_token_biases_by_id(tmp_path) -> None:
    """A head trained on a smaller corpus starts the next run: every weight copied, each token's bias
    found by its LLM token id in the old vocabulary, a new token at the old biases' mean."""
    from safetensors.torch import save_file

    from tympan.training.ctc_stage import CtcStageError, warm_start

    old = tiny_bridge()
    with torch.no_grad():
        old.bias.copy_(torch.arange(V, dtype=torch.float32))
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(tmp_path / "projector.safetensors"))
    CtcVocab(tuple(range(V)), V + 5).save(tmp_path / "vocab.json")
    cfg = old.cfg
    new = CtcBridge(cfg, 8, H, torch.tensor([3, V + 2, 1]))  # token V + 2 was never scored by the old head
    assert warm_start(new, CtcVocab((3, V + 2, 1), V + 5), tmp_path, V + 5) == 1
    assert new.bias.tolist() == [3.0, (V - 1) / 2, 1.0]
    assert new.vocab_ids.tolist() == [3, V + 2, 1]
    assert torch.equal(new.inp.weight, old.inp.weight) and torch.equal(new.blank, old.blank)
    wider = CtcBridge(replace(cfg, width=32, ffn_size=64), 8, H, torch.tensor([3]))
    with pytest.raises(CtcStageError, match=r"inp\.weight"):
        warm_start(wider, CtcVocab((3,), V + 5), tmp_path, V + 5)


def test_untied_bridge_is_refused() -> None:
    cfg = ProjectorConfig(kind="ctc", frame_average=2, width=16, layers=1, heads=2, ffn_size=32)
    model = CtcBridge(cfg, 8, H, torch.arange(V))
    with pytest.raises(RuntimeError, match="tie"):
        model(torch.randn(1, 4, 8), torch.tensor([4]))
    with pytest.raises(ValueError, match="rows"):
        model.tie(torch.randn(V - 1, H))


def test_onnx_export_matches_torch_for_any_batch_and_length(tmp_path) -> None:
    import onnxruntime as ort

    model = tiny_bridge().eval()
    x, lengths = torch.randn(2, 37, 8), torch.tensor([37, 21])
    path = tmp_path / "bridge.onnx"
    torch.onnx.export(model, (x, lengths), str(path), input_names=["x", "lengths"], output_names=["emb", "n"],
                      dynamic_axes={"x": {0: "b", 1: "t"}, "lengths": {0: "b"}, "emb": {0: "b", 1: "s"},
                                    "n": {0: "b"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames, rows in [(37, [37, 21]), (50, [50, 3]), (9, [9]), (120, [120, 60, 1])]:
        x, lengths = torch.randn(len(rows), frames, 8), torch.tensor(rows)
        with torch.no_grad():
            want, want_n = model(x, lengths)
        got, got_n = session.run(None, {"x": x.numpy(), "lengths": lengths.numpy()})
        assert got_n.tolist() == want_n.tolist()
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


@pytest.mark.parametrize(("text", "spoken"), [
    ("Founded in 1924, the firm has 7874 employees.",
     "Founded in nineteen twenty-four, the firm has seven thousand eight hundred seventy-four employees."),
    ("Open from 7:30 until 21:00; checkout at 12:00 or 9:05.",
     "Open from seven thirty until twenty-one hundred; checkout at twelve o'clock or nine oh five."),
    ("She came 25th in the 1990s.", "She came twenty-fifth in the nineteen nineties."),
    ("Call 0163 494 631; the code for the door is 9411.",
     "Call zero one six three four nine four six three one; the code for the door is nine four one one."),
    ("A 30-minute trip costs $5, 60% less.", "A thirty minute trip costs five dollars, sixty percent less."),
])
def test_spoken_form(text: str, spoken: str) -> None:
    assert spoken_form(text) == spoken


def test_ctc_target_is_lowercase_words() -> None:
    assert ctc_target("It's 3.5 km — \"go\" North!") == "it's three point five km go north"


class Tokenizer:
    """A byte-level-BPE-like tokenizer over a fixed vocabulary, greedy longest match (for the target tests)."""

    def __init__(self, pieces: list[str]) -> None:
        self.vocab = {p: i for i, p in enumerate(pieces)}

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        s, out = text.replace(" ", "Ġ"), []
        while s:
            end = max(e for e in range(1, len(s) + 1) if s[:e] in self.vocab)
            out.append(self.vocab[s[:end]])
            s = s[end:]
        return out

    def convert_ids_to_tokens(self, i: int) -> str:
        return {v: k for k, v in self.vocab.items()}[i]

    def convert_tokens_to_ids(self, piece: str) -> int | None:
        return self.vocab.get(piece)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.convert_ids_to_tokens(i) for i in ids).replace("Ġ", " ")


def test_vocab_and_targets_spell_unseen_words(tmp_path) -> None:
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz'"]
    tok = Tokenizer(["Ġ", *letters, *("Ġ" + c for c in letters), "Ġgo", "Ġten", "Ġmeters", "Ġforward", "Ġzebra"])
    vocab = build_vocab(tok, ["Go 10 meters"])
    assert tok.vocab["Ġzebra"] not in vocab.ids and tok.vocab["Ġten"] in vocab.ids
    ids = targets(tok, vocab, "Go forward 10 meters, zebra")
    assert text_of(tok, vocab, ids) == "go forward ten meters zebra"
    vocab.save(tmp_path / "vocab.json")
    assert CtcVocab.load(tmp_path / "vocab.json", len(tok)) == vocab
    with pytest.raises(ValueError, match="tokenizer of"):
        CtcVocab.load(tmp_path / "vocab.json", len(tok) + 1)


def test_simulation_without_errors_is_the_token_embeddings() -> None:
    from tympan.training.model.simulate import ErrorProfile, embed, simulate

    table = torch.randn(50, H)
    tokens = [3, 7, 7, 12]
    ids, weights = simulate(tokens, ErrorProfile(peak_mean=1.0, peak_std=0.0), 50, 4, np.random.default_rng(0))
    assert ids[:, 0].tolist() == tokens and np.allclose(weights[:, 0], 1.0)
    torch.testing.assert_close(embed(ids, weights, table), table[tokens], atol=1e-6, rtol=0)


def test_simulated_bridge_input_lives_where_the_table_does() -> None:
    """Text batches on a GPU: the simulated segments are built on the embedding table's device and in
    its dtype (found on the first GPU run of the lora stage: CPU weights times a CUDA table). The meta
    device stands in for a GPU here: any mix of devices raises."""
    from tympan.training.model.simulate import ErrorProfile, embed, simulate

    ids, weights = simulate([3, 7, 12], ErrorProfile(), 50, 4, np.random.default_rng(0))
    out = embed(ids, weights, torch.empty(50, H, device="meta", dtype=torch.bfloat16))
    assert out.device.type == "meta" and out.dtype == torch.bfloat16 and out.shape == (len(ids), H)


def test_simulated_error_rates_are_the_profile_s() -> None:
    from tympan.training.model.simulate import ErrorProfile, align, measure, simulate

    assert align([1, 2, 3], [1, 9, 3, 4]) == [(1, 1), (2, 9), (3, 3), (None, 4)]
    assert align([1, 2, 3], [1, 3]) == [(1, 1), (2, None), (3, 3)]
    profile = ErrorProfile(substitution=0.15, deletion=0.1, insertion=0.05, peak_mean=0.8, peak_std=0.1,
                           confusions={5: [(6, 3), (7, 1)]})
    rng = np.random.default_rng(1)
    refs, hyps, peaks = [], [], []
    for _ in range(400):
        tokens = rng.integers(0, 200, 12).tolist()
        ids, weights = simulate(tokens, profile, 200, 4, rng)
        refs.append(tokens)
        hyps.append(ids[:, 0].tolist())
        peaks += weights[:, 0].tolist()
    got = measure(refs, hyps, peaks)
    # Alignment can pair a deletion and an insertion as one substitution: totals within a point or two.
    assert abs(got.substitution - 0.15) < 0.03 and abs(got.deletion - 0.1) < 0.03 and abs(got.insertion - 0.05) < 0.03
    assert abs(got.peak_mean - 0.8) < 0.02
    ids, _ = simulate([5] * 2000, ErrorProfile(substitution=1.0, confusions=profile.confusions), 200, 4, rng)
    assert set(ids[:, 0].tolist()) == {6, 7} and (ids[:, 0] == 6).mean() > 0.65


def ctc_recipe(tiny_cfg, steps: int):
    from tympan.training.recipe import StageConfig, replace

    projector = replace(tiny_cfg.projector, kind="ctc", frame_average=2, top_k=4)
    train = replace(tiny_cfg.train, ctc=StageConfig(steps=steps, lr=1e-2, warmup_steps=5, tasks=["asr"]),
                    save_every=20, log_every=5, eval_every=0)
    return replace(tiny_cfg, projector=projector, train=train)


def test_ctc_stage_learns_and_resumes_exactly(tiny_cfg, toy_corpus, tmp_path, capsys) -> None:
    """The stage through the trainer: the loss falls to a third, and a run stopped at step 20
    and resumed ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from tympan.training.trainer import train

    cfg = ctc_recipe(tiny_cfg, 60)
    (outcome,) = train(cfg, "ctc", tmp_path / "a", show_progress=False)
    assert outcome.final is not None and outcome.step == 60
    log = [json.loads(line) for line in (tmp_path / "a" / "ctc" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.33 * losses[0]
    (stopped,) = train(cfg, "ctc", tmp_path / "b", until_step=20, show_progress=False)
    assert stopped.final is None and stopped.step == 20
    (resumed,) = train(cfg, "ctc", tmp_path / "b", show_progress=False)
    assert resumed.step == 60
    a = load_file(str(tmp_path / "a" / "ctc" / "final" / "projector.safetensors"))
    b = load_file(str(tmp_path / "b" / "ctc" / "final" / "projector.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from tympan.training.model.simulate import ErrorProfile

    errors = ErrorProfile.load(tmp_path / "a" / "ctc" / "final" / "errors.json")
    assert 0 <= errors.substitution <= 1 and 0 <= errors.deletion <= 1 and 0 < errors.peak_mean <= 1
    # A learning-curve point: greedy-CTC WER of the checkpoint on a manifest's ASR lines.
    from tympan.config import dump_toml
    from tympan.training import ctc_stage

    (tmp_path / "ctc.toml").write_text(dump_toml(cfg.to_toml_dict()))
    capsys.readouterr()
    ctc_stage.main(["--config", str(tmp_path / "ctc.toml"), "--checkpoint", str(tmp_path / "a" / "ctc" / "final"),
                    "--manifest", str(toy_corpus / "dev.jsonl")])
    point = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert point["n"] == 6 and point["ctc_wer"] >= 0  # the tiny head barely emits yet: the figure, not its value
    # The same point as a row of the learning curve (models/default/curve.jsonl), from a step checkpoint.
    from tympan.training import curve

    curve.main(["--checkpoint", str(tmp_path / "a" / "ctc" / "step-000040"), "--config", str(tmp_path / "ctc.toml"),
                "--dev", str(toy_corpus / "dev.jsonl"), "--out", str(tmp_path / "curve.jsonl")])
    row = json.loads((tmp_path / "curve.jsonl").read_text())
    assert (row["stage"], row["step"], row["total_steps"]) == ("ctc", 40, 40)
    assert row["dev"] == {"asr": {"en": {"ctc_wer": point["ctc_wer"], "n": 6}}}
    # A checkpoint trained before its manifests grew says how much audio it saw; a negative figure is refused.
    curve.main(["--checkpoint", str(tmp_path / "a" / "ctc" / "step-000040"), "--config", str(tmp_path / "ctc.toml"),
                "--train-hours", "4.125", "--out", str(tmp_path / "curve2.jsonl")])
    assert json.loads((tmp_path / "curve2.jsonl").read_text())["train_audio_hours"] == 4.12
    with pytest.raises(SystemExit):
        curve.main(["--checkpoint", str(tmp_path / "a"), "--train-hours", "-1", "--out", str(tmp_path / "c3.jsonl")])
    assert "--train-hours must be >= 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ctc_run(tiny_cfg, tmp_path_factory):
    """Every stage of the bridge recipe on the tiny model: (run directory, per-stage outcomes)."""
    from tympan.training.recipe import StageConfig, replace
    from tympan.training.trainer import train

    cfg = ctc_recipe(tiny_cfg, 40)
    cfg = replace(cfg, train=replace(cfg.train, lora=StageConfig(steps=20, lr=3e-3, tasks=["asr", "st", "sqa"]),
                                     joint=StageConfig(steps=20, lr=1e-3, lr_lora=1e-3, tasks=["asr", "st"])))
    run = tmp_path_factory.mktemp("ctc-run")
    return run, train(cfg, "all", run, show_progress=False)


def test_a_ctc_run_warm_started_from_an_earlier_head_starts_where_it_left_off(ctc_run, tiny_cfg, tmp_path,
                                                                            capsys) -> None:
    """`tympan train --stage ctc --warm-start OLD/ctc/final`: the new run's first losses are the
    trained head's, not a random one's."""
    from tympan.training.trainer import train

    run, _ = ctc_run
    cfg = ctc_recipe(tiny_cfg, 5)
    (outcome,) = train(cfg, "ctc", tmp_path / "warm", init={"ctc": run / "ctc" / "final"}, show_progress=False)
    assert outcome.step == 5
    assert "warm-started from" in capsys.readouterr().err
    first = [json.loads(line) for line in (tmp_path / "warm" / "ctc" / "log.jsonl").read_text().splitlines()]
    cold = [json.loads(line) for line in (run / "ctc" / "log.jsonl").read_text().splitlines()]
    last_cold = [r["loss"] for r in cold if "loss" in r][-1]
    assert first[0]["step"] == 5 and first[0]["loss"] < 0.5 * cold[0]["loss"]
    assert first[0]["loss"] < 2 * last_cold


def test_a_joint_stage_with_the_bridge_frozen_trains_lora_alone(ctc_run, tiny_cfg, tmp_path) -> None:
    """train.joint.train_projector = false: LoRA learns from what the bridge really gives, and the
    bridge (the CTC head the served ASR text comes from) stays exactly as the ctc stage left it."""
    from safetensors.torch import load_file

    from tympan.training.model.checkpoint import read_meta
    from tympan.training.recipe import StageConfig, replace
    from tympan.training.trainer import train

    run = ctc_run[0]
    cfg = ctc_recipe(tiny_cfg, 40)
    joint = StageConfig(steps=6, lr=1e-3, lr_lora=1e-3, tasks=["asr", "st"], train_projector=False)
    cfg = replace(cfg, train=replace(cfg.train, joint=joint))
    init = {"projector": run / "ctc" / "final", "lora": run / "lora" / "final"}
    (outcome,) = train(cfg, "joint", tmp_path, init=init, show_progress=False)
    assert outcome.final is not None and read_meta(outcome.final)["trained"] == ["lora"]
    before = load_file(str(run / "ctc" / "final" / "projector.safetensors"))
    after = load_file(str(outcome.final / "projector.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    lora_before = load_file(str(run / "lora" / "final" / "adapter" / "adapter_model.safetensors"))
    lora_after = load_file(str(outcome.final / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)
    log = [json.loads(x) for x in (tmp_path / "joint" / "log.jsonl").read_text().splitlines()]
    assert all("lr_projector" not in r and "lr_lora" in r for r in log if "loss" in r)


def test_all_stages_over_the_bridge_train_export_and_serve(ctc_run, toy_corpus) -> None:
    """ctc -> lora (text as simulated bridge output) -> joint (LM + CTC loss): each stage learns; the
    checkpoint exports to a bundle that serves the same tokens."""
    from tympan.training.model.checkpoint import load_checkpoint
    from tympan.training.model.ctc import CtcBridge

    tmp_path, outcomes = ctc_run
    assert [o.stage for o in outcomes] == ["ctc", "lora", "joint"] and all(o.final for o in outcomes)
    for stage in ("lora", "joint"):
        log = [json.loads(x) for x in (tmp_path / stage / "log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in log if "loss" in r]
        assert losses[-1] < losses[0], (stage, losses)
    model = load_checkpoint(tmp_path / "joint" / "final")
    assert isinstance(model.projector, CtcBridge)
    # Text reaches the LLM as the bridge would give its spoken form: exactly the tokens' rows, when clean.
    from tympan.training.model.ctc_targets import targets

    assert model.vocab is not None
    ids = targets(model.tokenizer, model.vocab, "two three")
    torch.testing.assert_close(model.text_content("two three"), model.projector.table[ids])
    # Exported and served: the bundle says which bridge it holds, verification passed (the ONNX graph's
    # segments and the served tokens equal the checkpoint's), and a recording is answered.
    from tympan.audio import load_audio
    from tympan.export.bundle import export_bundle
    from tympan.manifest import load_manifest
    from tympan.runtime.decode import Stop
    from tympan.runtime.speech_model import SpeechModel

    export_bundle(tmp_path / "joint" / "final", tmp_path / "bundle")
    served = SpeechModel.load(tmp_path / "bundle")
    assert served.bundle.manifest.encoder.bridge == "ctc"
    example = next(e for e in load_manifest(toy_corpus / "dev.jsonl") if e.is_speech and e.task == "asr")
    assert example.audio is not None
    audio = load_audio(example.audio, served.sample_rate)
    instruction = served.prompts.instruction("asr", "en")
    (speech,) = served.embed_audio([audio])
    (checkpoint_speech,) = model.project(model.encode([audio]))
    assert speech.shape == tuple(checkpoint_speech.shape)
    assert served.decode(speech, instruction).tokens == model.generate([checkpoint_speech], [instruction])[0]
    # The graph's greedy CTC text (the daemon's partials) is the checkpoint's greedy CTC decode.
    (encoded,) = served.encode([audio])
    with torch.no_grad():
        logits, frames = model.projector.logits(*pad_sequences(model.encode([audio])))
    (expected,) = greedy_ids(logits, frames)
    assert served.hears and encoded.ctc_ids == model.projector.vocab_ids[expected].tolist()
    assert served.heard(encoded) == served.prompts.decode(encoded.ctc_ids)
    # A bridge that heard nothing: no decode, an empty answer, on both sides.
    nothing = served.decode(speech[:0], instruction)
    assert nothing.tokens == [] and nothing.stop is Stop.NOTHING_HEARD
    assert model.generate([checkpoint_speech[:0]], [instruction]) == [[]]


@pytest.fixture(scope="module")
def hearing_bundle(ctc_run):
    """The tiny bridge's bundle with its blank silenced, so the tiny head's CTC text is never empty."""
    from safetensors.torch import load_file, save_file

    from tympan.export.bundle import export_bundle

    run, _ = ctc_run
    checkpoint = run / "hearing"
    shutil.copytree(run / "joint" / "final", checkpoint)
    weights = load_file(str(checkpoint / "projector.safetensors"))
    weights["blank_bias"] = torch.tensor(-1e4)
    save_file(weights, str(checkpoint / "projector.safetensors"))
    export_bundle(checkpoint, run / "hearing-bundle")
    return run / "hearing-bundle"


def test_the_engine_gives_the_heard_text_as_partials_without_the_llm(hearing_bundle) -> None:
    """A partial is the encoder call's greedy CTC text; a final is the LLM's decode, its tokens not streamed."""
    from tympan.daemon.engine import Engine, Job
    from tympan.daemon.protocol import Request
    from tympan.daemon.settings import DecodeConfig
    from tympan.runtime.grounding import departure
    from tympan.runtime.speech_model import SpeechModel

    model = SpeechModel.load(hearing_bundle)
    audio = alsa_speech("Front_Center")
    (encoded,) = model.encode([audio])
    heard = model.heard(encoded)
    assert model.hears and heard
    answer = model.respond(audio, model.prompts.instruction("asr", "en"))
    streamed: list[str] = []

    async def run(partials_from: str, ground_asr: bool = True) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        engine = Engine(model, DecodeConfig(partials_from=partials_from, ground_asr=ground_asr), loop)
        got: dict[str, str] = {}
        done = asyncio.Event()

        def on_done(kind: str):
            def deliver(text: str, stats: dict) -> None:
                got[kind] = text
                if len(got) == 2:
                    done.set()
            return deliver

        # Both queued before the worker starts: a final submitted while the partial runs would preempt it.
        engine.submit(Job("s", 0, "partial", audio, Request(), on_done=on_done("partial")))
        engine.submit(Job("t", 0, "final", audio, Request(), on_done=on_done("final"), on_text=streamed.append))
        engine.start()
        await asyncio.wait_for(done.wait(), 60)
        engine.stop()
        assert engine.answers_replaced == int(ground_asr)
        return got

    # The tiny random LLM's answer has nothing to do with what was heard: the final is the heard words.
    assert departure(answer, heard) > DecodeConfig().max_departure
    got = asyncio.run(run("auto"))
    assert got == {"partial": heard, "final": heard[:1].upper() + heard[1:]} and streamed == []
    got = asyncio.run(run("llm", ground_asr=False))  # the old way: partials are LLM decodes, the final's tokens stream
    assert got["partial"] == answer and got["final"] == answer and streamed


def test_the_daemon_serves_the_heard_words_where_the_answer_departs(hearing_bundle, tmp_path) -> None:
    """`tympan serve` on a bridge: its ASR finals are the offline run's (the answer held to what was heard),
    each replacement counted in /metrics; with decode.ground_asr off, the LLM's own answers."""
    from daemon_harness import DaemonProcess, offline_finals, v1_finals

    from tympan.runtime.decode import DecodeSettings
    from tympan.runtime.grounding import departure
    from tympan.runtime.speech_model import SpeechModel

    audio = np.concatenate([alsa_speech("Front_Center"), np.zeros(16000, np.float32), alsa_speech("Rear_Left")])
    expected = offline_finals(hearing_bundle, audio, task="asr", target_lang="en")
    model = SpeechModel.load(hearing_bundle)
    raw = [model.respond(a, model.prompts.instruction("asr", "en")) for a in
           (alsa_speech("Front_Center"), alsa_speech("Rear_Left"))]
    assert len(expected) == 2 and expected != raw
    with DaemonProcess(hearing_bundle, tmp_path / "grounded") as daemon:
        finals = asyncio.run(v1_finals(daemon, audio))
        assert [f["text"] for f in finals] == expected
        # Counted per final decode: a speculative final decoded at a pause and dropped counts too.
        replaced = sum(a != b for a, b in zip(expected, raw, strict=True))
        daemon.wait_metrics(lambda m: m.get("tympan_asr_answers_replaced_total", 0) >= replaced > 0)
    assert all(departure(r, e.lower()) > DecodeSettings().max_departure for r, e in zip(raw, expected, strict=True)
               if r != e)
    with DaemonProcess(hearing_bundle, tmp_path / "raw", config="[decode]\nground_asr = false\n") as daemon:
        assert [f["text"] for f in asyncio.run(v1_finals(daemon, audio))] == raw
        assert daemon.metrics()["tympan_asr_answers_replaced_total"] == 0


def test_ctc_partials_need_a_ctc_bundle(tympan_home, tmp_path) -> None:
    """A dense bundle with partials_from = "ctc": the daemon refuses to start, in one line naming the key."""
    from tympan.daemon.cli import default_bundle

    config = tmp_path / "daemon.toml"
    config.write_text('[decode]\npartials_from = "ctc"\n')
    out = subprocess.run([sys.executable, "-m", "tympan", "serve", "--config", str(config), "--bundle",
                          str(default_bundle()), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert 'decode.partials_from = "ctc"' in out.stderr and "'dense'" in out.stderr, out.stderr


def test_eval_reports_the_ctc_text_beside_the_answer(ctc_run, hearing_bundle, toy_corpus) -> None:
    """`tympan eval` scores the greedy CTC text beside the LLM's answer, the same from the bundle and from
    the checkpoint it was exported from."""
    from tympan.evaluate import BundleRunner, evaluate, format_report
    from tympan.manifest import load_manifest
    from tympan.runtime.decode import DecodeSettings
    from tympan.runtime.grounding import departure
    from tympan.scoring import normalize_english, wer
    from tympan.training.model.runner import CheckpointRunner

    examples = [e for e in load_manifest(toy_corpus / "dev.jsonl") if e.is_speech and e.task == "asr"]
    report = evaluate(BundleRunner(hearing_bundle), examples)
    hyps = report.hypotheses[("asr", "en")]
    assert all(h.heard for h in hyps)
    figures = report.scores[("asr", "en")]
    refs = [h.example.target for h in hyps]
    assert figures["ctc_wer"] == round(wer(refs, [h.heard for h in hyps], normalize_english), 2)
    # The served text is the LLM's answer, or the heard words where the answer departed from them, as the
    # daemon serves it; the LLM's own WER is reported beside it.
    assert figures["llm_wer"] == round(wer(refs, [h.answer for h in hyps], normalize_english), 2)
    replaced = [h for h in hyps if h.text != h.answer]
    assert figures["replaced"] == len(replaced) > 0
    assert all(h.text.lower() == h.heard for h in replaced)
    assert all(h.text == h.answer for h in hyps if departure(h.answer, h.heard) <= DecodeSettings().max_departure)
    assert "CTC WER" in format_report(report) and "LLM WER" in format_report(report)
    unground = evaluate(BundleRunner(hearing_bundle, settings=DecodeSettings(ground_asr=False)), examples)
    assert [h.text for h in unground.hypotheses[("asr", "en")]] == [h.answer for h in hyps]
    checkpoint = CheckpointRunner(ctc_run[0] / "hearing")
    assert [checkpoint.heard(a) for a in [_load(h.example, 16000) for h in hyps]] == [h.heard for h in hyps]


def test_a_bundle_with_an_ngram_lm_hears_through_the_beam_search(ctc_run, hearing_bundle, toy_corpus,
                                                                  tmp_path) -> None:
    """`python -m tympan.training.ngram` counts the training text and weighs the LM on the dev utterances;
    ship and export carry it; the bundle's graph gives the frames the checkpoint gives, and the heard text
    is the beam search's, the same from the bundle and from the checkpoint."""
    from itertools import product

    from tympan.export.bundle import export_bundle
    from tympan.manifest import load_manifest
    from tympan.runtime.ctc_lm import LM_FILE, TOP_LABELS, NgramLM, beam_search
    from tympan.runtime.speech_model import SpeechModel
    from tympan.training import ngram
    from tympan.training.model.runner import CheckpointRunner
    from tympan.training.model.speech_llm import ctc_posteriors
    from tympan.training.ship import _copy_trained

    checkpoint = tmp_path / "with-lm"
    shutil.copytree(ctc_run[0] / "hearing", checkpoint)
    assert ngram.main(["--checkpoint", str(checkpoint)]) == 0
    lm = NgramLM.load(checkpoint / LM_FILE)
    assert lm.order == 3 and lm.keys[0].size >= 5 and lm.keys[2].size >= 5
    assert (lm.settings.weight, lm.settings.length_bonus) in product(ngram.WEIGHTS, ngram.BONUSES)
    (tmp_path / "shipped").mkdir()
    _copy_trained(checkpoint, tmp_path / "shipped", torch.float16)
    assert (tmp_path / "shipped" / LM_FILE).read_bytes() == (checkpoint / LM_FILE).read_bytes()

    manifest = export_bundle(checkpoint, tmp_path / "bundle")
    assert manifest.lm is not None and LM_FILE in manifest.files
    assert (manifest.lm.weight, manifest.lm.length_bonus, manifest.lm.beam) == \
        (lm.settings.weight, lm.settings.length_bonus, lm.settings.beam)
    served, runner = SpeechModel.load(tmp_path / "bundle"), CheckpointRunner(checkpoint)
    assert served.lm is not None and runner.lm is not None
    examples = [e for e in load_manifest(toy_corpus / "dev.jsonl") if e.is_speech and e.task == "asr"][:4]
    for example in examples:
        audio = _load(example, served.sample_rate)
        (encoded,) = served.encode([audio])
        (want,) = ctc_posteriors(runner.model.projector, runner.model.encode([audio]))
        assert encoded.ctc_frames is not None
        assert encoded.ctc_frames[0].shape[1] == min(TOP_LABELS, runner.model.projector.blank_id)
        np.testing.assert_array_equal(encoded.ctc_frames[0], want[0])
        for got, ref in zip(encoded.ctc_frames[1:], want[1:], strict=True):
            np.testing.assert_allclose(got, ref, atol=1e-4)
        heard = served.heard(encoded)
        assert heard == runner.heard(audio)
        assert heard == served.prompts.decode(beam_search(*encoded.ctc_frames, served.lm)).strip()


def _load(example, rate: int):
    from tympan.audio import load_audio

    return load_audio(example.audio, rate)


def test_shipping_in_fp16_keeps_the_bridge_token_ids() -> None:
    """fp16 holds integers exactly only up to 2048; SmolLM2's ids reach 49151."""
    from tympan.training.ship import _cast

    state = {"vocab_ids": torch.tensor([5, 2049, 49151]), "inp.weight": torch.randn(3, 2)}
    half = _cast(state, torch.float16)
    assert half["vocab_ids"].dtype == torch.long and torch.equal(half["vocab_ids"], state["vocab_ids"])
    assert half["inp.weight"].dtype == torch.float16


def test_a_new_ship_keeps_the_learning_curve_beside_the_model(ctc_run, tmp_path) -> None:
    """models/default/curve.jsonl covers every checkpoint shipped so far: shipping the next one
    replaces the weights, not the curve (it did, once)."""
    from tympan.training.ship import ship

    src = tmp_path / "ckpt"
    shutil.copytree(ctc_run[0] / "lora" / "final", src)
    for random_part in ("encoder.safetensors", "llm", "tokenizer"):  # as a package-based checkpoint has
        target = src / "base" / random_part
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    dst = tmp_path / "models" / "default"
    dst.mkdir(parents=True)
    (dst / "curve.jsonl").write_text('{"step": 1}\n')
    (dst / "stale.bin").write_bytes(b"old")
    assert ship(src, dst, check=None) == "float16"
    assert (dst / "curve.jsonl").read_text() == '{"step": 1}\n'
    assert not (dst / "stale.bin").exists() and (dst / "projector.safetensors").is_file()


def test_a_lora_stage_checkpoint_ships_and_exports_with_its_bridge(ctc_run, tmp_path) -> None:
    """The lora stage trains no projector, but its checkpoint holds the (CTC-trained) bridge: it takes
    speech, so it exports, and shipping it carries the bridge, else the shipped model cannot load."""
    from tympan.export.bundle import export_bundle
    from tympan.training.model.checkpoint import load_checkpoint
    from tympan.training.ship import _copy_trained

    src = ctc_run[0] / "lora" / "final"
    (tmp_path / "shipped").mkdir()
    _copy_trained(src, tmp_path / "shipped", torch.float32)
    # The tiny bases are random, so they do not ship (a real ship names packages); put them back to load.
    shutil.rmtree(tmp_path / "shipped" / "base")
    shutil.copytree(src / "base", tmp_path / "shipped" / "base")
    shipped, original = load_checkpoint(tmp_path / "shipped"), load_checkpoint(src)
    assert shipped.projector.state_dict().keys() == original.projector.state_dict().keys()
    for name, value in original.projector.state_dict().items():
        assert torch.equal(shipped.projector.state_dict()[name], value), name
    assert export_bundle(src, tmp_path / "bundle").encoder.bridge == "ctc"


def test_a_curve_row_of_an_llm_stage_scores_the_full_model_and_all_real_recordings(ctc_run, toy_corpus,
                                                                                     tmp_path) -> None:
    """A lora checkpoint's row: served, LLM and CTC WER side by side; `--limit` cuts dev, not the real set."""
    from tympan.manifest import load_manifest
    from tympan.training import curve

    out = tmp_path / "curve.jsonl"
    curve.main(["--checkpoint", str(ctc_run[0] / "lora" / "final"), "--dev", str(toy_corpus / "dev.jsonl"),
                "--real", str(toy_corpus / "dev.jsonl"), "--limit", "1", "--out", str(out)])
    row = json.loads(out.read_text())
    assert row["stage"] == "lora" and row["total_steps"] == 60  # 40 ctc + 20 lora
    asr_lines = [e for e in load_manifest(toy_corpus / "dev.jsonl") if e.is_speech and e.task == "asr"]
    assert row["dev"]["asr"]["en"]["n"] == 1 and row["real"]["asr"]["en"]["n"] == len(asr_lines) > 1
    assert {"wer", "llm_wer", "ctc_wer", "replaced"} <= set(row["real"]["asr"]["en"])
    assert "hypotheses" not in row["real"]
