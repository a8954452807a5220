from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.audio import load_audio
from tympan.training.model.checkpoint import assemble_model, build_base, load_checkpoint, save_base, save_checkpoint
from tympan.training.model.prompt import CLOSE, OPEN, PromptError
from tympan.training.model.speech_llm import IGNORE, SpeechLLM


def _toy_lines(toy: Path, n: int) -> list[dict]:
    lines = [json.loads(x) for x in (toy / "train.jsonl").read_text().splitlines()]
    return [x for x in lines if "audio" in x][:n]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("base")


@pytest.fixture(scope="module")
def model(tiny_cfg, base_dir: Path) -> SpeechLLM:
    base = build_base(tiny_cfg, ["one two three", "eins zwei drei", "uno due tre"])
    save_base(base_dir, tiny_cfg, base)  # before LoRA is injected into the LLM
    m = assemble_model(tiny_cfg, base, lora=True)
    # A LoRA that changes the output (B is zero-initialised), so merging is a real test.
    gen = torch.Generator().manual_seed(0)
    for name, p in m.llm.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    return m.eval()


def _speech(model: SpeechLLM, toy: Path, n: int) -> tuple[list[torch.Tensor], list[dict]]:
    lines = _toy_lines(toy, n)
    audios = [load_audio(toy / x["audio"], 16000) for x in lines]
    return model.project(model.encode(audios)), lines


def test_speech_embeddings_reach_the_llm_at_the_placeholder(model: SpeechLLM, toy_corpus: Path) -> None:
    (speech,), _ = _speech(model, toy_corpus, 1)
    instruction = model.prompts.instruction("asr", "en")
    ids = model.prompts.prompt(instruction)
    assert model.tokenizer.decode(ids.prefix).endswith(OPEN)
    assert model.tokenizer.decode(ids.suffix).startswith(CLOSE)
    seen: list[torch.Tensor] = []
    first_layer = model.llm.get_base_model().model.layers[0]
    hook = first_layer.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True)
    try:
        batch = model.assemble([speech], [instruction], ["one two"])
        model.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask)
    finally:
        hook.remove()
    received = seen[0][0]
    p, n = len(ids.prefix), speech.shape[0]
    torch.testing.assert_close(received[p : p + n], speech, atol=0, rtol=0)
    embed = model.llm.get_input_embeddings()
    torch.testing.assert_close(received[:p], embed(torch.tensor(ids.prefix)), atol=0, rtol=0)
    torch.testing.assert_close(received[p + n : p + n + len(ids.suffix)], embed(torch.tensor(ids.suffix)),
                               atol=0, rtol=0)


def test_labels_are_masked_on_everything_but_the_answer(model: SpeechLLM, toy_corpus: Path) -> None:
    speech, _ = _speech(model, toy_corpus, 2)
    instr = [model.prompts.instruction("st", "de"), model.prompts.instruction("sqa", "it", "Quanti numeri?")]
    targets = ["eins zwei", "tre"]
    batch = model.assemble(speech, instr, targets)
    assert batch.labels is not None
    for i in range(2):
        row = batch.labels[i][batch.attention_mask[i].bool()]
        answer = model.prompts.target_ids(targets[i])
        assert row[-len(answer):].tolist() == answer
        assert (row[: -len(answer)] == IGNORE).all()
        assert model.tokenizer.decode(answer[-1:]) == "<|im_end|>"
    # Padding positions are ignored too.
    assert (batch.labels[~batch.attention_mask.bool()] == IGNORE).all()


def test_the_loss_over_answer_logits_only_is_the_loss_over_all_logits(model: SpeechLLM, toy_corpus: Path) -> None:
    """loss_sum asks the LLM for logits at answer positions only; the sum is the full cross-entropy's."""
    from tympan.manifest import load_manifest

    examples = [e for e in load_manifest(toy_corpus / "train.jsonl") if e.is_speech][:3]
    speech, _ = _speech(model, toy_corpus, 3)
    batch = model.assemble(speech, [model.instruction(e) for e in examples], [e.target for e in examples])
    assert batch.labels is not None
    with torch.no_grad():
        logits = model.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits
        full = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                                                 ignore_index=IGNORE, reduction="sum")
        sliced = model.loss_sum(speech, examples)
    assert {e.task for e in examples} >= {"asr"} and full > 0
    torch.testing.assert_close(sliced, full, rtol=1e-5, atol=1e-4)


def test_instructions_are_in_the_target_language_and_unknown_pairs_are_refused(model: SpeechLLM) -> None:
    assert "Deutsche" in model.prompts.instruction("st", "de")
    assert "italiano" in model.prompts.instruction("st", "it")
    assert "中文" in model.prompts.instruction("st", "zh")
    assert "Wie viele?" in model.prompts.instruction("sqa", "de", "Wie viele?")
    with pytest.raises(PromptError, match="no instruction for task 'st' into 'fr'"):
        model.prompts.instruction("st", "fr")
    with pytest.raises(PromptError, match="needs a question"):
        model.prompts.instruction("sqa", "en")


def test_batched_generation_matches_one_at_a_time(model: SpeechLLM, toy_corpus: Path) -> None:
    speech, _ = _speech(model, toy_corpus, 3)
    instr = [model.prompts.instruction("asr", "en")] * 3
    batched = model.generate(speech, instr, max_new_tokens=8)
    single = [model.generate([s], instr[:1], max_new_tokens=8)[0] for s in speech]
    assert batched == single
    assert all(len(r) > 0 for r in batched)


def test_lora_merge_gives_the_same_greedy_output(tiny_cfg, model: SpeechLLM, toy_corpus: Path) -> None:
    import copy

    speech, _ = _speech(model, toy_corpus, 3)
    instr = [model.prompts.instruction("st", "it")] * 2 + [model.prompts.instruction("sqa", "en", "How many?")]
    unmerged = model.generate(speech, instr, max_new_tokens=12)
    merged_model = copy.deepcopy(model)
    merged_model.llm = merged_model.llm.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged_model.llm.named_parameters())
    assert merged_model.generate(speech, instr, max_new_tokens=12) == unmerged
    # The adapter matters: without it the output differs.
    with model.llm.disable_adapter():
        assert model.generate(speech, instr, max_new_tokens=12) != unmerged


def test_checkpoint_reloads_exactly(model: SpeechLLM, base_dir: Path, toy_corpus: Path, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", model, stage="joint", step=7, trained=["projector", "lora"], base_dir=base_dir)
    loaded = load_checkpoint(tmp_path / "ckpt")
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], atol=0, rtol=0, msg=k)
    speech, _ = _speech(model, toy_corpus, 2)
    speech2, _ = _speech(loaded, toy_corpus, 2)
    instr = [model.prompts.instruction("asr", "en")] * 2
    assert loaded.generate(speech2, instr, max_new_tokens=10) == model.generate(speech, instr, max_new_tokens=10)


def test_checkpoint_without_metadata_is_refused(tmp_path: Path) -> None:
    from tympan.training.model.checkpoint import CheckpointError

    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a tympan checkpoint"):
        load_checkpoint(tmp_path / "half")


def test_projector_averages_frames_and_ignores_padding(model: SpeechLLM) -> None:
    from tympan.training.model.projector import average_frames

    x = torch.arange(14, dtype=torch.float32).reshape(1, 7, 2).repeat(2, 1, 1)
    out, lengths = average_frames(x, torch.tensor([7, 4]), 3)
    assert lengths.tolist() == [3, 2]
    torch.testing.assert_close(out[0, 2], x[0, 6])  # last group holds one real frame
    torch.testing.assert_close(out[1, 1], x[1, 3])  # frames 4-5 of row 1 are padding
    torch.testing.assert_close(out[0, 0], x[0, :3].mean(0))
    assert np.isfinite(out.numpy()).all()
