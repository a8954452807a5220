"""Export a merged HF causal LM to two ONNX graphs for serving with onnxruntime (no torch at run time).

- ``prefill.onnx``: ``inputs_embeds`` (speech embeddings are spliced into the prompt in embedding space, so the
  first pass cannot take token ids) + ``attention_mask`` + ``position_ids`` -> last-position logits + KV cache.
- ``decode.onnx``: one token id per sequence + mask + position + KV cache -> logits + grown KV cache.
- ``embed_tokens.npy``: the token embedding table, so a caller can embed prompt text without torch.

Route: ``torch.onnx.export(..., dynamo=False)`` around a wrapper that takes and returns the cache as flat tensors.
``transformers.exporters.OnnxExporter.export_for_generation`` also runs on transformers 5.24, but it specialises
batch to the sample's (1), cannot honour opset 17 (its version conversion fails and it stays at 18), keeps
all-position logits, and took ~10x longer on the tiny test model.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto
from transformers import DynamicCache

FORMAT = "tympan-llm-onnx"
FORMAT_VERSION = 1
INFO_FILE = "llm_onnx.json"
PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
EMBED_FILE = "embed_tokens.npy"
WEIGHTS_FILE = "weights.bin"

# Protobuf caps a file at 2 GiB; above this many parameter bytes the weights go to one external data file.
_EXTERNAL_THRESHOLD_BYTES = 1_500_000_000
# Smaller tensors stay inline: separate external records for shapes and scalars only add seeks.
_EXTERNAL_MIN_BYTES = 1024
# Page-aligned offsets let onnxruntime memory-map the tensors.
_ALIGN = 4096
# Trace sizes: all different, so no traced dimension can be confused with another.
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 7, 5


def past_names(num_layers: int) -> list[str]:
    return [f"past.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


class _Step(torch.nn.Module):
    """One forward pass with the cache as flat (key, value) tensors per layer, last-position logits only.

    ``take_ids`` picks the decode form (token ids, embedded inside the graph) over the prefill form
    (``inputs_embeds``). The prefill form takes no cache: it always starts a sequence.
    """

    def __init__(self, lm: torch.nn.Module, take_ids: bool) -> None:
        super().__init__()
        self.lm = lm
        self.take_ids = take_ids

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        embeds = self.lm.get_input_embeddings()(x) if self.take_ids else x
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs or None, config=self.lm.config)
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            # Only the last position picks the next token; all-position logits cost seq x vocab for nothing.
            logits_to_keep=1,
        )
        flat: list[torch.Tensor] = []
        for layer in cache.layers:  # updated in place by the forward pass
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


@contextmanager
def _export_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and an ONNX-exportable attention for the duration of the export; the caller's settings return."""
    was_training = model.training
    config = model.config
    old_attn = getattr(config, "_attn_implementation", None)
    switch = old_attn not in ("sdpa", "eager")
    model.eval()
    if switch:
        model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings flag Python branches frozen into the graph; the frozen ones are checked by the tests.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            yield
    finally:
        if switch and old_attn is not None:
            model.set_attn_implementation(old_attn)
        model.train(was_training)


def _check_model(model: torch.nn.Module) -> None:
    if hasattr(model, "peft_config"):
        raise ValueError("export_llm_onnx needs a merged model: call merge_and_unload() on the PEFT model first")
    if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
        raise ValueError(f"export_llm_onnx needs a transformers causal LM, got {type(model).__name__}")
    bad = {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if bad:
        raise ValueError(f"export_llm_onnx needs float32 weights, found {sorted(bad)}: call model.float() first")


def _tensor_bytes(tensor: TensorProto, base: Path) -> bytes:
    """The tensor's raw bytes, read from the exporter's external file if it wrote one."""
    if tensor.data_location == TensorProto.EXTERNAL:
        meta = {e.key: e.value for e in tensor.external_data}
        offset = int(meta.get("offset", 0))
        with open(base / meta["location"], "rb") as f:
            f.seek(offset)
            return f.read(int(meta["length"])) if "length" in meta else f.read()
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    # Typed fields (float_data, int64_data...): normalise through numpy.
    return onnx.numpy_helper.to_array(tensor).tobytes()


class _SharedWeights:
    """One external data file for both graphs; tensors with identical bytes are stored once.

    The prefill and decode graphs hold the same transformer weights, so without this an 8B export would write
    every layer twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - kept open across both graphs, closed in close()
        self.seen: dict[tuple[int, tuple[int, ...], str], tuple[int, int]] = {}
        self.size = 0

    def place(self, tensor: TensorProto, data: bytes) -> None:
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest())
        if key not in self.seen:
            pad = -self.size % _ALIGN
            self.file.write(b"\0" * pad)
            self.seen[key] = (self.size + pad, len(data))
            self.file.write(data)
            self.size += pad + len(data)
        offset, length = self.seen[key]
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v

    def close(self) -> None:
        self.file.close()


def _finish_graph(src: Path, dst: Path, shared: _SharedWeights | None) -> None:
    """Rewrite a traced graph into ``dst``: self-contained, or its large tensors in the shared weights file."""
    model = onnx.load(str(src), load_external_data=False)
    for tensor in model.graph.initializer:
        data = _tensor_bytes(tensor, src.parent)
        if shared is not None and len(data) >= _EXTERNAL_MIN_BYTES:
            shared.place(tensor, data)
        elif tensor.data_location == TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
            tensor.raw_data = data
    onnx.save(model, str(dst))


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs, [o.name for o in model.graph.output]


def export_llm_onnx(
    model: torch.nn.Module,
    out_dir: Path,
    opset: int = 17,
    *,
    external_data: bool | None = None,
    embed_dtype: str = "float32",
) -> dict[str, Any]:
    """Write ``prefill.onnx``, ``decode.onnx`` and ``embed_tokens.npy`` (+ ``weights.bin`` when external) to
    ``out_dir``, and ``llm_onnx.json`` holding the returned description, which ``tympan.daemon.llm_onnx.OnnxLLM``
    takes.

    ``external_data``: None = only when the weights exceed ~1.5 GB (protobuf's 2 GiB limit); the graphs then
    share one deduplicated ``weights.bin``. ``embed_dtype``: "float32" (exact) or "float16" (half the size).
    """
    _check_model(model)
    if embed_dtype not in ("float32", "float16"):
        raise ValueError(f"embed_dtype must be 'float32' or 'float16', got {embed_dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    hidden = int(config.hidden_size)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if external_data is None:
        external_data = param_bytes > _EXTERNAL_THRESHOLD_BYTES

    with _export_mode(model), tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp_name:
        tmp = Path(tmp_name)
        embeds = torch.randn(_TRACE_BATCH, _TRACE_SEQ, hidden)
        mask = torch.ones(_TRACE_BATCH, _TRACE_SEQ, dtype=torch.long)
        positions = torch.arange(_TRACE_SEQ).expand(_TRACE_BATCH, _TRACE_SEQ)
        prefill = _Step(model, take_ids=False)
        sample = prefill(embeds, mask, positions)
        num_layers = (len(sample) - 1) // 2
        _, num_kv_heads, _, head_dim = sample[1].shape
        past, present = past_names(num_layers), present_names(num_layers)

        batch_seq = {0: "batch", 1: "seq"}
        prefill_axes: dict[str, dict[int, str]] = {
            "inputs_embeds": batch_seq,
            "attention_mask": batch_seq,
            "position_ids": batch_seq,
            "logits": {0: "batch"},
        }
        prefill_axes.update({name: {0: "batch", 2: "seq"} for name in present})
        torch.onnx.export(
            prefill,
            (embeds, mask, positions),
            str(tmp / PREFILL_FILE),
            input_names=["inputs_embeds", "attention_mask", "position_ids"],
            output_names=["logits", *present],
            dynamic_axes=prefill_axes,
            opset_version=opset,
            dynamo=False,
        )

        # The decode graph is traced with exactly one new token: transformers' sdpa path reshapes a single query
        # specially for grouped KV heads, so its token axis is fixed at 1 (onnxruntime rejects anything else).
        ids = torch.randint(0, vocab, (_TRACE_BATCH, 1))
        past_sample = [t[:, :, :_TRACE_PAST].contiguous() for t in sample[1:]]
        decode_mask = torch.ones(_TRACE_BATCH, _TRACE_PAST + 1, dtype=torch.long)
        decode_positions = torch.full((_TRACE_BATCH, 1), _TRACE_PAST)
        decode_axes: dict[str, dict[int, str]] = {
            "input_ids": {0: "batch"},
            "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch"},
            "logits": {0: "batch"},
        }
        decode_axes.update({name: {0: "batch", 2: "past"} for name in past})
        decode_axes.update({name: {0: "batch", 2: "total"} for name in present})
        torch.onnx.export(
            _Step(model, take_ids=True),
            (ids, decode_mask, decode_positions, *past_sample),
            str(tmp / DECODE_FILE),
            input_names=["input_ids", "attention_mask", "position_ids", *past],
            output_names=["logits", *present],
            dynamic_axes=decode_axes,
            opset_version=opset,
            dynamo=False,
        )

        shared = _SharedWeights(out_dir / WEIGHTS_FILE) if external_data else None
        try:
            for name in (PREFILL_FILE, DECODE_FILE):
                _finish_graph(tmp / name, out_dir / name, shared)
        finally:
            if shared is not None:
                shared.close()
    if not external_data:
        (out_dir / WEIGHTS_FILE).unlink(missing_ok=True)  # a stale one from an earlier export would mislead

    table = model.get_input_embeddings().weight.detach().cpu().numpy().astype(embed_dtype)
    np.save(out_dir / EMBED_FILE, table)

    prefill_in, prefill_out = _io_names(out_dir / PREFILL_FILE)
    decode_in, decode_out = _io_names(out_dir / DECODE_FILE)
    files = [PREFILL_FILE, DECODE_FILE, EMBED_FILE] + ([WEIGHTS_FILE] if external_data else [])
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": str(getattr(config, "model_type", "")),
        "opset": opset,
        "files": files,
        "external_data": WEIGHTS_FILE if external_data else None,
        "prefill": {"file": PREFILL_FILE, "inputs": prefill_in, "outputs": prefill_out, "logits": "last"},
        "decode": {
            "file": DECODE_FILE,
            "inputs": decode_in,
            "outputs": decode_out,
            "logits": "last",
            "tokens_per_step": 1,
        },
        "embed": {"file": EMBED_FILE, "dtype": embed_dtype, "shape": [vocab, hidden]},
        "past_names": past,
        "present_names": present,
        "num_layers": num_layers,
        "num_heads": int(config.num_attention_heads),
        "num_kv_heads": int(num_kv_heads),
        "head_dim": int(head_dim),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": int(getattr(config, "max_position_embeddings", 0) or 0),
        "dtype": "float32",
        "cache_layout": "batch, kv_heads, seq, head_dim",
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
