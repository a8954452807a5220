"""Greedy generation from ``inputs_embeds`` with the ONNX graph written by ``tympan.export.llm_graph``.

numpy + onnxruntime only: the daemon must not pay torch's import time and memory for the LLM.
One session serves prefill (the prompt, an empty cache) and every decode step (one embedding row, the cache so
far), so the weights are in memory once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# Must match tympan.export.llm_graph (not imported from there: that module imports torch).
FORMAT = "tympan-llm-onnx"
FORMAT_VERSION = 2
INPUT_NAMES = ["inputs_embeds", "attention_mask", "position_ids"]


class OnnxLLM:
    """One session over the exported graph, one sequence at a time. ``info`` is the dict ``export_llm_onnx``
    returned (also saved as ``llm_onnx.json`` beside the graph)."""

    def __init__(
        self,
        directory: Path,
        info: dict[str, Any],
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"not a {FORMAT} v{FORMAT_VERSION} description: format={info.get('format')!r} "
                f"format_version={info.get('format_version')!r} (re-export the model)"
            )
        directory = Path(directory)
        self.info = info
        self.hidden_size = int(info["hidden_size"])
        self.vocab_size = int(info["vocab_size"])
        self.num_layers = int(info["num_layers"])
        self.past_names: list[str] = list(info["past_names"])
        self.present_names: list[str] = list(info["present_names"])

        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 or None, got {threads}")
            options.intra_op_num_threads = threads
        # One request at a time: the graph is a chain, parallel branches would only contend for the cores.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(directory / info["graph"]["file"]), options, providers=providers)
        found = [i.name for i in self.session.get_inputs()]
        expected = [*INPUT_NAMES, *self.past_names]
        if found != expected:
            raise ValueError(f"graph inputs {found} differ from the expected {expected}")
        self._outputs = [o.name for o in self.session.get_outputs()]
        if self._outputs != ["logits", *self.present_names]:
            raise ValueError(f"graph outputs {self._outputs} are not logits + cache")
        # The prefill's cache: 0 positions per layer (onnxruntime takes 0-length axes), made once and reused.
        empty = np.zeros((1, int(info["num_kv_heads"]), 0, int(info["head_dim"])), np.float32)
        self._empty_past = {name: ort.OrtValue.ortvalue_from_numpy(empty) for name in self.past_names}

        # Memory-mapped: an 8B model's table is 1-2 GB and a request reads a few rows of it.
        self.table = np.load(directory / info["embed"]["file"], mmap_mode="r")
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

    def step(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Sequence[Any]
    ) -> list[Any]:
        """One run of the graph on numpy arrays or OrtValues: (batch, seq, hidden) float32 embeddings, the
        (batch, past + seq) int64 mask and (batch, seq) int64 positions, and the ``2 * num_layers`` cache tensors
        (batch, kv_heads, past, head_dim). Returns [logits (batch, 1, vocab), *present] as OrtValues."""
        feed = {
            name: value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
            for name, value in zip(INPUT_NAMES, (inputs_embeds, attention_mask, position_ids), strict=True)
        }
        feed.update(
            {
                name: value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
                for name, value in zip(self.past_names, past, strict=True)
            }
        )
        return list(self.session.run_with_ort_values(self._outputs, feed))

    def _check_embeds(self, inputs_embeds: np.ndarray) -> np.ndarray:
        embeds = np.asarray(inputs_embeds)
        if embeds.ndim == 3:
            if embeds.shape[0] != 1:
                raise ValueError(f"inputs_embeds holds {embeds.shape[0]} sequences; generate takes one")
            embeds = embeds[0]
        if embeds.ndim != 2:
            raise ValueError(f"inputs_embeds must be (seq, hidden) or (1, seq, hidden), got shape {embeds.shape}")
        if embeds.shape[1] != self.hidden_size:
            raise ValueError(f"inputs_embeds hidden size {embeds.shape[1]} != the model's {self.hidden_size}")
        if embeds.shape[0] == 0:
            raise ValueError("inputs_embeds is empty (0 positions)")
        if not np.issubdtype(embeds.dtype, np.floating):
            raise ValueError(f"inputs_embeds must be floating point, got {embeds.dtype}")
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if not np.isfinite(embeds).all():
            raise ValueError("inputs_embeds holds NaN or infinite values")
        return embeds[None]

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int, stop_ids: Sequence[int]) -> Iterator[int]:
        """Greedy token ids, each yielded as soon as it is computed. Stops before yielding a stop id, or after
        ``max_new_tokens``. Bad arguments raise ValueError here, not at the first ``next()``."""
        embeds = self._check_embeds(inputs_embeds)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        return self._greedy(embeds, int(max_new_tokens), frozenset(int(i) for i in stop_ids))

    def _greedy(self, embeds: np.ndarray, max_new_tokens: int, stop: frozenset[int]) -> Iterator[int]:
        if max_new_tokens == 0:
            return
        length = embeds.shape[1]
        # Prefill: the whole prompt against an empty cache.
        outputs = self.step(
            embeds,
            np.ones((1, length), np.int64),
            np.arange(length, dtype=np.int64)[None],
            [self._empty_past[name] for name in self.past_names],
        )
        for i in range(max_new_tokens):
            token = int(np.argmax(outputs[0].numpy()[0, -1]))
            if token in stop:
                return
            yield token
            if i == max_new_tokens - 1:
                return  # no decode step whose logits nobody reads
            # Decode: the token's embedding row, the cache as OrtValues straight from the previous run.
            outputs = self.step(
                self.embed([token])[None],
                np.ones((1, length + 1), np.int64),
                np.array([[length]], np.int64),
                outputs[1:],
            )
            length += 1
