"""Export a merged HF causal LM to one ONNX graph for serving with onnxruntime (no torch at run time).

- ``llm.onnx``: ``inputs_embeds`` + ``attention_mask`` + ``position_ids`` + KV cache -> last-position logits + the
  grown KV cache. The same graph serves both phases, so a session holds the weights once:
  prefill feeds the prompt (speech embeddings spliced into text in embedding space, so the first pass cannot take
  token ids) with a cache of 0 positions; each decode step feeds the new token's embedding row (seq 1) with the
  cache the previous call returned.
- ``embed_tokens.npy``: the token embedding table, for prompt text and for each generated token, without torch.

The empty cache needs no placeholder: onnxruntime takes tensors with a 0-length axis, and the traced Concat/Shape
arithmetic gives past + seq = seq. The tests check the graph against transformers for past 0 with seq 1..120 and
for seq 1 with long pasts.

The graph is traced with seq 7 and past 5 (both > 1): transformers takes Python branches on these sizes
(``q_length == 1`` packs grouped-query heads differently, an empty cache reports length 0 by a branch), which the
tracer freezes. With seq and past > 1 the frozen branches are the general ones, which also hold for seq 1 and past 0.

Route: ``torch.onnx.export(..., dynamo=False)`` around a wrapper that takes and returns the cache as flat tensors.
``transformers.exporters.OnnxExporter.export_for_generation`` also runs on transformers 5.24, but it specialises
batch to the sample's (1), cannot honour opset 17 (its version conversion fails and it stays at 18), keeps
all-position logits, and took 9.8 s against 0.4 s for this route on the tiny test model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tympan.runtime.bundle_manifest import (
    LLM_ONNX_FORMAT,
    LLM_ONNX_FORMAT_VERSION,
    LLM_ONNX_INPUTS,
    EmbedTable,
    LlmOnnx,
    OnnxGraph,
)

INFO_FILE = "llm_onnx.json"
GRAPH_FILE = "llm.onnx"
QUANTIZED_GRAPH_FILES = {"int8": "llm.int8.onnx", "int4": "llm.int4.onnx"}
EMBED_FILE = "embed_tokens.npy"
WEIGHTS_FILE = "weights.bin"
# Files of format version 1, removed from out_dir so that a re-export leaves no stale graphs beside the new one.
_V1_FILES = ("prefill.onnx", "decode.onnx")

# Protobuf caps a file at 2 GiB; above this many parameter bytes the weights go to one external data file.
_EXTERNAL_THRESHOLD_BYTES = 1_500_000_000
# Smaller tensors stay inline: separate external records for shapes and scalars only add seeks.
_EXTERNAL_MIN_BYTES = 1024
# Page-aligned offsets let onnxruntime memory-map the tensors.
_ALIGN = 4096
# Trace sizes: all different, so no traced dimension can be confused with another, and seq, past > 1 (see above).
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 7, 5


def past_names(num_layers: int) -> list[str]:
    return [f"past.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


class _Step(torch.nn.Module):
    """One forward pass from embeddings, with the cache as flat (key, value) tensors per layer in and out, and
    last-position logits only."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.lm.config)
        odd = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
        if odd:
            # Sliding-window layers keep Python-int lengths, which the tracer would freeze at the sample's.
            raise ValueError(f"export_llm_onnx supports full-attention caches only, the model uses {odd}")
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


def _finish_graph(src: Path, dst: Path, weights: Path | None) -> None:
    """Rewrite the traced graph into ``dst``: self-contained, or its large tensors in ``weights`` (one file, each
    tensor at a page-aligned offset)."""
    model = onnx.load(str(src), load_external_data=False)
    # The tracer names the kept-positions axis of the logits (logits_to_keep=1) as if it were dynamic; it is 1.
    logits_dims = next(o for o in model.graph.output if o.name == "logits").type.tensor_type.shape.dim
    logits_dims[1].Clear()
    logits_dims[1].dim_value = 1
    with ExitStack() as stack:
        out = stack.enter_context(open(weights, "wb")) if weights is not None else None
        size = 0
        for tensor in model.graph.initializer:
            data = _tensor_bytes(tensor, src.parent)
            if out is not None and weights is not None and len(data) >= _EXTERNAL_MIN_BYTES:
                pad = -size % _ALIGN
                out.write(b"\0" * pad)
                out.write(data)
                offset, size = size + pad, size + pad + len(data)
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                tensor.data_location = TensorProto.EXTERNAL
                for k, v in (("location", weights.name), ("offset", str(offset)), ("length", str(len(data)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
            elif tensor.data_location == TensorProto.EXTERNAL:
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
                tensor.raw_data = data
    onnx.save(model, str(dst))


def quantize_graph(src: Path, dst: Path, bits: int = 8) -> None:
    """`bits`-bit weights for every MatMul, a scale per block of 32 inputs (onnxruntime's MatMulNBits, symmetric,
    int8 compute), into one self-contained file. Measured on Qwen2.5-Coder-0.5B's chat prompt, last-position logits
    against PyTorch fp32: correlation 0.9997 and the same top 5 with 8 bits; 0.969 with 4 bits; 0.925 with int8
    and a scale per tensor (operator MatMulInteger: one outlier row flattens the rest), whose first German token
    was another. fp32 compute (accuracy level 1) ran a decode step 40x slower."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=32, is_symmetric=True,
                                     accuracy_level=4)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input's or output's shape: ints for fixed axes, names for dynamic ones."""
    return [d.dim_param or int(d.dim_value) for d in value.type.tensor_type.shape.dim]


def _describe_graph(path: Path, num_layers: int) -> OnnxGraph:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    shapes = {v.name: _shape(v) for v in [*inputs, *model.graph.output]}
    # One entry per cache kind: the layers all have the same shape.
    cache_shapes: dict[str, list[int | str]] = {}
    for prefix, names in (("past", past_names(num_layers)), ("present", present_names(num_layers))):
        for kv in ("key", "value"):
            found = {json.dumps(shapes.pop(n)) for n in names if n.endswith(kv)}
            if len(found) != 1:
                raise RuntimeError(f"the exported {prefix} {kv} tensors differ in shape: {sorted(found)}")
            cache_shapes[f"{prefix}.{{i}}.{kv}"] = json.loads(found.pop())
    return OnnxGraph(
        file=path.name,
        inputs=[v.name for v in inputs],
        outputs=[o.name for o in model.graph.output],
        shapes={**shapes, **cache_shapes},
        dims={"total": "past + seq", "past": "cached positions, 0 for prefill"},
        logits="last",
    )


def export_llm_onnx(
    model: torch.nn.Module,
    out_dir: Path,
    opset: int = 17,
    *,
    external_data: bool | None = None,
    embed_dtype: str = "float32",
    quantize: str | None = None,
) -> LlmOnnx:
    """Write ``llm.onnx`` and ``embed_tokens.npy`` (+ ``weights.bin`` when external) to ``out_dir``, and
    ``llm_onnx.json`` holding the returned description, which ``tympan.runtime.onnx_llm.OnnxLLM`` takes.

    ``external_data``: None = only when the weights exceed ~1.5 GB (protobuf's 2 GiB limit); the graph's large
    tensors then go to one ``weights.bin``. ``embed_dtype``: "float32" (exact) or "float16" (half the size; every
    embedding fed to the graph, prompt text and generated tokens, is then rounded to float16).
    ``quantize="int8"`` (or ``"int4"``): the graph served is ``llm.int8.onnx`` (``llm.int4.onnx``), block-wise
    quantized weights of every MatMul (``quantize_graph``; the fp32 graph is not kept): a decode step reads a
    quarter (an eighth) of the bytes.
    """
    _check_model(model)
    if embed_dtype not in ("float32", "float16"):
        raise ValueError(f"embed_dtype must be 'float32' or 'float16', got {embed_dtype!r}")
    if quantize is not None and quantize not in QUANTIZED_GRAPH_FILES:
        raise ValueError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    hidden = int(config.hidden_size)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if external_data is None:
        external_data = param_bytes > _EXTERNAL_THRESHOLD_BYTES
    if quantize is not None:
        bits = 8 if quantize == "int8" else 4
        # The quantized graph is one file, and protobuf caps a file at 2 GiB.
        quantized_bytes = param_bytes // 4 * bits // 8
        if quantized_bytes > _EXTERNAL_THRESHOLD_BYTES:
            raise ValueError(f"the {quantize} graph would hold about {quantized_bytes / 1e9:.1f} GB of weights, over "
                             f"the {_EXTERNAL_THRESHOLD_BYTES / 1e9:.1f} GB a single ONNX file can take: quantize to "
                             "int4, or export without quantization (weights in weights.bin)")

    with _export_mode(model), tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp_name:
        tmp = Path(tmp_name)
        step = _Step(model)
        # The cache's shape (layers, kv heads, head dim) comes from a cacheless pass.
        first = step(torch.zeros(1, 1, hidden), torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
        num_layers = (len(first) - 1) // 2
        _, num_kv_heads, _, head_dim = first[1].shape
        past, present = past_names(num_layers), present_names(num_layers)

        total = _TRACE_PAST + _TRACE_SEQ
        sample = (
            torch.randn(_TRACE_BATCH, _TRACE_SEQ, hidden),
            torch.ones(_TRACE_BATCH, total, dtype=torch.long),
            torch.arange(_TRACE_PAST, total).expand(_TRACE_BATCH, _TRACE_SEQ),
            *(torch.randn(_TRACE_BATCH, num_kv_heads, _TRACE_PAST, head_dim) for _ in past),
        )
        axes: dict[str, dict[int, str]] = {
            "inputs_embeds": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "seq"},
            "logits": {0: "batch"},
        }
        axes.update({name: {0: "batch", 2: "past"} for name in past})
        axes.update({name: {0: "batch", 2: "total"} for name in present})
        torch.onnx.export(
            step,
            sample,
            str(tmp / GRAPH_FILE),
            input_names=[*LLM_ONNX_INPUTS, *past],
            output_names=["logits", *present],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
        if quantize is not None:
            _finish_graph(tmp / GRAPH_FILE, tmp / "fp32.onnx", tmp / WEIGHTS_FILE if external_data else None)
            graph_file, external_data = QUANTIZED_GRAPH_FILES[quantize], False
            quantize_graph(tmp / "fp32.onnx", out_dir / graph_file, bits=8 if quantize == "int8" else 4)
        else:
            _finish_graph(tmp / GRAPH_FILE, out_dir / GRAPH_FILE, out_dir / WEIGHTS_FILE if external_data else None)
            graph_file = GRAPH_FILE
    stale = [*_V1_FILES, *([] if external_data else [WEIGHTS_FILE]),
             *({GRAPH_FILE, *QUANTIZED_GRAPH_FILES.values()} - {graph_file})]
    for name in stale:  # left by an earlier export, they would mislead
        (out_dir / name).unlink(missing_ok=True)

    table = model.get_input_embeddings().weight.detach().cpu().numpy().astype(embed_dtype)
    np.save(out_dir / EMBED_FILE, table)

    graph = _describe_graph(out_dir / graph_file, num_layers)
    info = LlmOnnx(
        format=LLM_ONNX_FORMAT,
        format_version=LLM_ONNX_FORMAT_VERSION,
        model_type=str(getattr(config, "model_type", "")),
        opset=opset,
        files=[graph_file, EMBED_FILE] + ([WEIGHTS_FILE] if external_data else []),
        external_data=WEIGHTS_FILE if external_data else None,
        graph=graph,
        usage={
            "prefill": "inputs_embeds = the prompt, past.* with 0 positions, mask ones(past + seq), "
            "position_ids = past .. past + seq - 1",
            "decode": "inputs_embeds = the embed row of the last token (seq 1), past.* = the previous present.*",
        },
        embed=EmbedTable(file=EMBED_FILE, dtype=embed_dtype, shape=[vocab, hidden]),
        past_names=past,
        present_names=present,
        num_layers=num_layers,
        num_heads=int(config.num_attention_heads),
        num_kv_heads=int(num_kv_heads),
        head_dim=int(head_dim),
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 0) or 0),
        dtype=quantize or "float32",
        cache_layout="batch, kv_heads, seq, head_dim",
    )
    (out_dir / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
    return info
