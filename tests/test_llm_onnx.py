"""The LLM exported to one ONNX graph and run by onnxruntime gives the same greedy tokens and logits as
transformers, for prefill (empty cache) and decode (one position) alike."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from tympan.export.llm_graph import EMBED_FILE, GRAPH_FILE, INFO_FILE, WEIGHTS_FILE, export_llm_onnx
from tympan.runtime.bundle_manifest import LlmOnnx
from tympan.runtime.decode import DecodeSettings, greedy_decode
from tympan.runtime.onnx_llm import OnnxLLM

HIDDEN, VOCAB, NEW_TOKENS = 64, 300, 12
LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 16
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Exported:
    model: LlamaForCausalLM
    directory: Path
    info: LlmOnnx
    llm: OnnxLLM


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=KV_HEADS,
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


def greedy(llm: OnnxLLM, embeds: np.ndarray, max_new_tokens: int, stop_ids: list[int] | None = None) -> list[int]:
    """The runtime's decode loop without its loop guard: the graph's own greedy tokens."""
    return greedy_decode(llm, embeds, stop_ids or [], DecodeSettings.unguarded(max_new_tokens)).tokens


def _random_embeds(seq: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((seq, HIDDEN)).astype(np.float32)


def test_info_describes_the_one_graph(exported: Exported) -> None:
    info, directory = exported.info, exported.directory
    assert LlmOnnx.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert json.loads((directory / INFO_FILE).read_text()) == info.to_json()
    assert info.format_version == 2
    assert (info.num_layers, info.num_kv_heads, info.head_dim) == (LAYERS, KV_HEADS, HEAD_DIM)
    assert (info.vocab_size, info.hidden_size, info.opset) == (VOCAB, HIDDEN, 17)
    assert info.external_data is None
    assert info.files == [GRAPH_FILE, EMBED_FILE]
    assert all((directory / f).is_file() for f in info.files)
    # One graph holds the weights: prefill and decode share it.
    assert [p.name for p in directory.glob("*.onnx")] == [GRAPH_FILE]
    graph = info.graph
    assert graph.inputs == ["inputs_embeds", "attention_mask", "position_ids", *info.past_names]
    assert graph.outputs == ["logits", *info.present_names]
    assert graph.shapes == {
        "inputs_embeds": ["batch", "seq", HIDDEN],
        "attention_mask": ["batch", "total"],
        "position_ids": ["batch", "seq"],
        "logits": ["batch", 1, VOCAB],
        "past.{i}.key": ["batch", KV_HEADS, "past", HEAD_DIM],
        "past.{i}.value": ["batch", KV_HEADS, "past", HEAD_DIM],
        "present.{i}.key": ["batch", KV_HEADS, "total", HEAD_DIM],
        "present.{i}.value": ["batch", KV_HEADS, "total", HEAD_DIM],
    }


@pytest.mark.parametrize(("past", "seq"), [(0, 1), (0, 5), (0, 40), (0, 120), (1, 1), (77, 1), (300, 1), (6, 3)])
def test_graph_matches_torch_for_any_past_and_seq(exported: Exported, past: int, seq: int) -> None:
    # past 0 is prefill (an empty cache), seq 1 is decode: the graph was traced with neither.
    rng = np.random.default_rng(100 * past + seq)
    embeds = rng.standard_normal((1, seq, HIDDEN)).astype(np.float32)
    cache = [rng.standard_normal((1, KV_HEADS, past, HEAD_DIM)).astype(np.float32) for _ in range(2 * LAYERS)]
    mask = np.ones((1, past + seq), np.int64)
    positions = np.arange(past, past + seq, dtype=np.int64)[None]
    logits, *present = (v.numpy() for v in exported.llm.run(embeds, mask, positions, cache))
    pairs = [(torch.from_numpy(cache[i]), torch.from_numpy(cache[i + 1])) for i in range(0, len(cache), 2)]
    with torch.no_grad():
        out = exported.model(
            inputs_embeds=torch.from_numpy(embeds),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
            cache=DynamicCache(ddp_cache_data=pairs, config=exported.model.config) if past else None,
            use_cache=True,
        )
    assert logits.shape == (1, 1, VOCAB)
    np.testing.assert_allclose(logits[:, 0], out.logits[:, -1].numpy(), atol=1e-4, rtol=0)
    for got, layer in zip(present[::2], out.cache.layers, strict=True):
        assert got.shape == (1, KV_HEADS, past + seq, HEAD_DIM)
        np.testing.assert_allclose(got, layer.keys.numpy(), atol=1e-4, rtol=0)
    for got, layer in zip(present[1::2], out.cache.layers, strict=True):
        np.testing.assert_allclose(got, layer.values.numpy(), atol=1e-4, rtol=0)


def test_batched_left_padded_prefill_and_decode_match_torch(exported: Exported) -> None:
    llm, model = exported.llm, exported.model
    # Two sequences, the second left-padded by 3: the graph takes any batch and honours the mask.
    rng = np.random.default_rng(4)
    embeds = rng.standard_normal((2, 13, HIDDEN)).astype(np.float32)
    mask = np.ones((2, 13), np.int64)
    mask[1, :3] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    empty = [np.zeros((2, KV_HEADS, 0, HEAD_DIM), np.float32)] * (2 * LAYERS)
    logits, *cache = llm.run(embeds, mask, positions, empty)
    tokens = np.array([[7], [250]], np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step_embeds = np.stack([llm.embed(t) for t in tokens])
    step_logits = llm.run(step_embeds, mask2, positions[:, -1:] + 1, cache)[0]
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
    np.testing.assert_allclose(logits.numpy()[:, 0], out.logits[:, -1].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(step_logits.numpy()[:, 0], step.logits[:, -1].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seq", [1, 5, 17, 40, 120])
def test_greedy_tokens_match_torch_for_random_embeddings(exported: Exported, seq: int) -> None:
    embeds = _random_embeds(seq, seed=seq)
    expected = _torch_greedy(exported.model, embeds, NEW_TOKENS)
    assert len(set(expected)) > 3, "degenerate reference; the test would prove little"
    assert greedy(exported.llm, embeds, NEW_TOKENS) == expected
    assert greedy(exported.llm, embeds[None], NEW_TOKENS) == expected


def test_greedy_tokens_match_torch_for_text_spliced_with_speech(exported: Exported) -> None:
    rng = np.random.default_rng(1)
    before, after = rng.integers(0, VOCAB, 9).tolist(), rng.integers(0, VOCAB, 6).tolist()
    # The daemon's layout: prompt text, then speech embeddings, then more text, all in embedding space.
    embeds = np.concatenate([exported.llm.embed(before), _random_embeds(20, seed=2), exported.llm.embed(after)])
    assert greedy(exported.llm, embeds, NEW_TOKENS) == _torch_greedy(exported.model, embeds, NEW_TOKENS)
    for ids in (before + after, after[:1]):
        text_only = exported.llm.embed(ids)
        assert greedy(exported.llm, text_only, NEW_TOKENS) == _torch_greedy(
            exported.model, text_only, NEW_TOKENS
        )


def test_stop_ids_end_generation_before_the_stop_token(exported: Exported) -> None:
    embeds = _random_embeds(11, seed=3)
    expected = _torch_greedy(exported.model, embeds, NEW_TOKENS)
    k = next(i for i in range(2, NEW_TOKENS) if expected[i] not in expected[:i])
    assert greedy(exported.llm, embeds, NEW_TOKENS, stop_ids=[expected[k], VOCAB + 5]) == expected[:k]
    assert greedy(exported.llm, embeds, NEW_TOKENS, stop_ids=[expected[0]]) == []
    assert greedy(exported.llm, embeds, 3) == expected[:3]
    # Streaming: each token comes out as soon as it is computed.
    seen: list[list[int]] = []
    settings = DecodeSettings.unguarded(NEW_TOKENS)
    greedy_decode(exported.llm, embeds, [], settings, on_token=lambda t: seen.append(list(t)))
    assert seen == [expected[:i] for i in range(1, NEW_TOKENS + 1)]


def test_embed_returns_the_models_embedding_rows(exported: Exported) -> None:
    ids = [0, 5, 299, 5, 42]
    rows = exported.llm.embed(ids)
    assert rows.dtype == np.float32 and rows.shape == (5, HIDDEN)
    np.testing.assert_array_equal(rows, exported.model.get_input_embeddings().weight[ids].detach().numpy())
    assert exported.llm.embed([]).shape == (0, HIDDEN)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        exported.llm.embed([1, VOCAB])


def test_bad_inputs_raise_value_error(exported: Exported, tmp_path: Path) -> None:
    llm = exported.llm
    with pytest.raises(ValueError, match="hidden size 32"):
        greedy(llm, np.zeros((4, 32), np.float32), 3)
    with pytest.raises(ValueError, match="empty"):
        greedy(llm, np.zeros((0, HIDDEN), np.float32), 3)
    with pytest.raises(ValueError, match="one"):
        greedy(llm, np.zeros((2, 4, HIDDEN), np.float32), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy(llm, np.zeros((4, HIDDEN), np.float32), -1)
    with pytest.raises(ValueError, match="NaN"):
        greedy(llm, np.full((4, HIDDEN), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="v2"):
        LlmOnnx.from_json({**exported.info.to_json(), "format_version": 1})
    with pytest.raises(ValueError, match="threads"):
        OnnxLLM(exported.directory, exported.info, threads=0)
    with pytest.raises(ValueError, match="embed_dtype"):
        export_llm_onnx(exported.model, tmp_path, embed_dtype="bfloat16")
    with pytest.raises(ValueError, match="float32 weights"):
        export_llm_onnx(_tiny_llama().half(), tmp_path)


def test_external_data_puts_the_weights_in_one_file(exported: Exported, tmp_path: Path) -> None:
    # Format-1 graphs left by an earlier export in the same directory go.
    for stale in ("prefill.onnx", "decode.onnx"):
        (tmp_path / stale).write_bytes(b"old")
    info = export_llm_onnx(exported.model, tmp_path, external_data=True)
    assert info.external_data == WEIGHTS_FILE and info.files == [GRAPH_FILE, EMBED_FILE, WEIGHTS_FILE]
    assert [p.name for p in tmp_path.glob("*.onnx")] == [GRAPH_FILE]
    inline = (exported.directory / GRAPH_FILE).stat().st_size
    # Only tensors under 1 KB (norms, shapes; many in this tiny model) stay in the graph.
    assert (tmp_path / GRAPH_FILE).stat().st_size < 0.3 * inline < (tmp_path / WEIGHTS_FILE).stat().st_size
    embeds = _random_embeds(9, seed=5)
    llm = OnnxLLM(tmp_path, info, threads=2)
    assert greedy(llm, embeds, NEW_TOKENS) == greedy(exported.llm, embeds, NEW_TOKENS)


def test_float16_table_halves_the_file_and_stays_close(exported: Exported, tmp_path: Path) -> None:
    info = export_llm_onnx(exported.model, tmp_path, embed_dtype="float16")
    assert info.embed.dtype == "float16"
    assert (tmp_path / EMBED_FILE).stat().st_size < 0.6 * (exported.directory / EMBED_FILE).stat().st_size
    llm = OnnxLLM(tmp_path, info, threads=2)
    ids = [3, 99, 250]
    rows = llm.embed(ids)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, exported.llm.embed(ids), atol=2e-3, rtol=0)
    assert len(greedy(llm, rows, NEW_TOKENS)) == NEW_TOKENS


def test_daemon_module_does_not_import_torch() -> None:
    code = (
        "import sys, tympan.runtime.onnx_llm\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
