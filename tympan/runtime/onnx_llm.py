"""The LLM as the ONNX graph written by ``tympan.export.llm_graph``, driven by the decode loop
(``tympan.runtime.decode``): prefill, then one token a step.

numpy + onnxruntime only: the daemon must not pay torch's import time and memory for the LLM.
One session serves prefill (the prompt, an empty cache) and every decode step (one embedding row, the cache so
far), so the weights are in memory once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tympan.runtime.bundle_manifest import LLM_ONNX_INPUTS, LlmOnnx


class OnnxLLM:
    """One session over the exported graph, one sequence at a time. ``info`` is what ``export_llm_onnx``
    returned (also saved as ``llm_onnx.json`` beside the graph). The decode state is the cache (the previous
    run's present.* OrtValues) and its length."""

    def __init__(
        self,
        directory: Path,
        info: LlmOnnx,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        directory = Path(directory)
        self.info = info
        self.hidden_size = info.hidden_size
        self.vocab_size = info.vocab_size
        self.num_layers = info.num_layers
        self.past_names = list(info.past_names)
        self.present_names = list(info.present_names)

        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 or None, got {threads}")
            options.intra_op_num_threads = threads
        # One request at a time: the graph is a chain, parallel branches would only contend for the cores.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see onnx_encoder.session_options
        providers = providers or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(directory / info.graph.file), options, providers=providers)
        found = [i.name for i in self.session.get_inputs()]
        expected = [*LLM_ONNX_INPUTS, *self.past_names]
        if found != expected:
            raise ValueError(f"graph inputs {found} differ from the expected {expected}")
        self._outputs = [o.name for o in self.session.get_outputs()]
        if self._outputs != ["logits", *self.present_names]:
            raise ValueError(f"graph outputs {self._outputs} are not logits + cache")
        # The prefill's cache: 0 positions per layer (onnxruntime takes 0-length axes), made once and reused.
        empty = np.zeros((1, info.num_kv_heads, 0, info.head_dim), np.float32)
        self._empty_past = {name: ort.OrtValue.ortvalue_from_numpy(empty) for name in self.past_names}

        # Memory-mapped: an 8B model's table is 1-2 GB and a request reads a few rows of it.
        self.table = np.load(directory / info.embed.file, mmap_mode="r")
        if self.table.shape != (self.vocab_size, self.hidden_size):
            raise ValueError(f"embedding table shape {self.table.shape} != ({self.vocab_size}, {self.hidden_size})")

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """Rows of the token embedding table, (len(ids), hidden) float32; no ids gives a (0, hidden) array."""
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.zeros((0, self.hidden_size), np.float32)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be a flat sequence of ints, got shape {arr.shape} dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"token ids {bad[:5].tolist()} outside the vocabulary [0, {self.vocab_size})")
        return np.asarray(self.table[arr], dtype=np.float32)

    def run(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Sequence[Any]
    ) -> list[Any]:
        """One run of the graph on numpy arrays or OrtValues: (batch, seq, hidden) float32 embeddings, the
        (batch, past + seq) int64 mask and (batch, seq) int64 positions, and the ``2 * num_layers`` cache tensors
        (batch, kv_heads, past, head_dim). Returns [logits (batch, 1, vocab), *present] as OrtValues."""
        feed = {
            name: value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
            for name, value in zip(LLM_ONNX_INPUTS, (inputs_embeds, attention_mask, position_ids), strict=True)
        }
        feed.update(
            {
                name: value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
                for name, value in zip(self.past_names, past, strict=True)
            }
        )
        return list(self.session.run_with_ort_values(self._outputs, feed))

    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, Any]:
        """The whole prompt, (positions, hidden) float32, against an empty cache."""
        length = inputs_embeds.shape[0]
        outputs = self.run(
            inputs_embeds[None],
            np.ones((1, length), np.int64),
            np.arange(length, dtype=np.int64)[None],
            [self._empty_past[name] for name in self.past_names],
        )
        return outputs[0].numpy()[0, -1], (outputs[1:], length)

    def extend(self, inputs_embeds: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """More prompt, (positions, hidden) float32, after the cache `state` (a prefill's or an extend's): the next
        position's logits and the grown state. `state` itself is left as it was (the graph writes new tensors), so
        a cached prompt prefix can be extended again and again."""
        past, length = state
        seq = inputs_embeds.shape[0]
        outputs = self.run(
            inputs_embeds[None],
            np.ones((1, length + seq), np.int64),
            np.arange(length, length + seq, dtype=np.int64)[None],
            past,
        )
        return outputs[0].numpy()[0, -1], (outputs[1:], length + seq)

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        """The token's embedding row against the cache as OrtValues straight from the previous run."""
        past, length = state
        outputs = self.run(
            self.embed([token])[None],
            np.ones((1, length + 1), np.int64),
            np.array([[length]], np.int64),
            past,
        )
        return outputs[0].numpy()[0, -1], (outputs[1:], length + 1)
