"""The LLM exported to ONNX and run by onnxruntime gives the same greedy tokens and logits as transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tympan.daemon.llm_onnx import OnnxLLM
from tympan.export.llm_onnx import INFO_FILE, WEIGHTS_FILE, export_llm_onnx

HIDDEN, VOCAB, NEW_TOKENS = 64, 300, 12
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Exported:
    model: LlamaForCausalLM
    directory: Path
    info: dict[str, Any]
    llm: OnnxLLM


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=VOCAB,
        # Larger than the default 0.02 so that greedy outputs vary instead of repeating one token.
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    model = _tiny_llama()
    directory = tmp_path_factory.mktemp("llm_onnx")
    info = export_llm_onnx(model, directory)
    return Exported(model, directory, info, OnnxLLM(directory, info, threads=2))


def _torch_greedy(model: LlamaForCausalLM, embeds: np.ndarray, n: int) -> list[int]:
    e = torch.from_numpy(embeds)[None]
    with torch.no_grad():
        out = model.generate(
            inputs_embeds=e,
            attention_mask=torch.ones(e.shape[:2], dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
        )
    return out[0].tolist()


def _random_embeds(seq: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((seq, HIDDEN)).astype(np.float32)


def test_info_describes_the_graphs(exported: Exported) -> None:
    info = exported.info
    assert json.loads(json.dumps(info)) == info
    assert json.loads((exported.directory / INFO_FILE).read_text()) == info
    assert (info["num_layers"], info["num_kv_heads"], info["head_dim"]) == (2, 2, 16)
    assert (info["vocab_size"], info["hidden_size"], info["opset"]) == (VOCAB, HIDDEN, 17)
    assert info["external_data"] is None
    assert all((exported.directory / f).is_file() for f in info["files"])
    assert info["prefill"]["inputs"] == ["inputs_embeds", "attention_mask", "position_ids"]
    assert info["decode"]["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]


@pytest.mark.parametrize("seq", [5, 17, 40])
def test_greedy_tokens_match_torch_for_random_embeddings(exported: Exported, seq: int) -> None:
    embeds = _random_embeds(seq, seed=seq)
    expected = _torch_greedy(exported.model, embeds, NEW_TOKENS)
    assert len(set(expected)) > 3, "degenerate reference; the test would prove little"
    assert list(exported.llm.generate(embeds, NEW_TOKENS, stop_ids=[])) == expected
    assert list(exported.llm.generate(embeds[None], NEW_TOKENS, stop_ids=[])) == expected


def test_greedy_tokens_match_torch_for_text_spliced_with_speech(exported: Exported) -> None:
    rng = np.random.default_rng(1)
    before, after = rng.integers(0, VOCAB, 9).tolist(), rng.integers(0, VOCAB, 6).tolist()
    # The daemon's layout: prompt text, then speech embeddings, then more text, all in embedding space.
    embeds = np.concatenate([exported.llm.embed(before), _random_embeds(20, seed=2), exported.llm.embed(after)])
    assert list(exported.llm.generate(embeds, NEW_TOKENS, [])) == _torch_greedy(exported.model, embeds, NEW_TOKENS)
    text_only = exported.llm.embed(before + after)
    assert list(exported.llm.generate(text_only, NEW_TOKENS, [])) == _torch_greedy(
        exported.model, text_only, NEW_TOKENS
    )


def test_stop_ids_end_generation_before_the_stop_token(exported: Exported) -> None:
    embeds = _random_embeds(11, seed=3)
    expected = _torch_greedy(exported.model, embeds, NEW_TOKENS)
    k = next(i for i in range(2, NEW_TOKENS) if expected[i] not in expected[:i])
    assert list(exported.llm.generate(embeds, NEW_TOKENS, stop_ids=[expected[k], VOCAB + 5])) == expected[:k]
    assert list(exported.llm.generate(embeds, NEW_TOKENS, stop_ids=[expected[0]])) == []
    assert list(exported.llm.generate(embeds, 3, stop_ids=[])) == expected[:3]
    assert list(exported.llm.generate(embeds, 0, stop_ids=[])) == []
    # Streaming: the first token comes out before the rest are computed.
    stream = exported.llm.generate(embeds, NEW_TOKENS, stop_ids=[])
    assert next(stream) == expected[0]


def test_prefill_and_decode_logits_match_torch(exported: Exported) -> None:
    llm, model = exported.llm, exported.model
    # Two sequences, the second left-padded by 3: the graphs take any batch and honour the mask.
    rng = np.random.default_rng(4)
    embeds = rng.standard_normal((2, 13, HIDDEN)).astype(np.float32)
    mask = np.ones((2, 13), np.int64)
    mask[1, :3] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    logits, *cache = llm.prefill.run(None, {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions})
    tokens = np.array([[7], [250]], np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step_logits, *_ = llm.decode.run(
        None,
        {
            "input_ids": tokens,
            "attention_mask": mask2,
            "position_ids": positions[:, -1:] + 1,
            **dict(zip(llm.past_names, cache, strict=True)),
        },
    )
    with torch.no_grad():
        out = model(
            inputs_embeds=torch.from_numpy(embeds),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
            use_cache=True,
        )
        step = model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask2),
            position_ids=torch.from_numpy(positions[:, -1:] + 1),
            cache=out.cache,
            use_cache=True,
        )
    assert logits.shape == (2, 1, VOCAB)
    np.testing.assert_allclose(logits[:, 0], out.logits[:, -1].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(step_logits[:, 0], step.logits[:, -1].numpy(), atol=1e-4, rtol=0)


def test_embed_returns_the_models_embedding_rows(exported: Exported) -> None:
    ids = [0, 5, 299, 5, 42]
    rows = exported.llm.embed(ids)
    assert rows.dtype == np.float32 and rows.shape == (5, HIDDEN)
    np.testing.assert_array_equal(rows, exported.model.get_input_embeddings().weight[ids].detach().numpy())
    assert exported.llm.embed([]).shape == (0, HIDDEN)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        exported.llm.embed([1, VOCAB])


def test_bad_inputs_raise_value_error(exported: Exported) -> None:
    llm = exported.llm
    with pytest.raises(ValueError, match="hidden size 32"):
        llm.generate(np.zeros((4, 32), np.float32), 3, [])
    with pytest.raises(ValueError, match="empty"):
        llm.generate(np.zeros((0, HIDDEN), np.float32), 3, [])
    with pytest.raises(ValueError, match="one"):
        llm.generate(np.zeros((2, 4, HIDDEN), np.float32), 3, [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm.generate(np.zeros((4, HIDDEN), np.float32), -1, [])
    with pytest.raises(ValueError, match="NaN"):
        llm.generate(np.full((4, HIDDEN), np.nan, np.float32), 3, [])


def test_external_data_shares_one_deduplicated_weights_file(exported: Exported, tmp_path: Path) -> None:
    info = export_llm_onnx(exported.model, tmp_path, external_data=True)
    assert info["external_data"] == WEIGHTS_FILE
    weights = (tmp_path / WEIGHTS_FILE).stat().st_size
    inline = sum((exported.directory / f).stat().st_size for f in ("prefill.onnx", "decode.onnx"))
    # The layers are in both graphs but stored once.
    assert weights < 0.6 * inline
    embeds = _random_embeds(9, seed=5)
    llm = OnnxLLM(tmp_path, info, threads=2)
    assert list(llm.generate(embeds, NEW_TOKENS, [])) == list(exported.llm.generate(embeds, NEW_TOKENS, []))


def test_daemon_module_does_not_import_torch() -> None:
    code = (
        "import sys, tympan.daemon.llm_onnx\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
