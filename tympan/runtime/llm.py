"""The bundle's LLM behind one interface: `embed(ids)` and a greedy `generate` that yields tokens.

Two runtimes: the merged model in PyTorch (default) or one ONNX graph with a KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tympan.runtime.bundle import Bundle, BundleError


class LLM(Protocol):
    hidden_size: int

    def embed(self, ids: Sequence[int]) -> np.ndarray: ...

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int, stop_ids: Sequence[int]) -> Iterator[int]: ...


class TorchLLM:
    """The merged (LoRA folded in) causal LM, greedy decoding with a KV cache."""

    def __init__(self, directory: Path, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        self.hidden_size = int(self.model.config.hidden_size)

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        with self.torch.no_grad():
            table = self.model.get_input_embeddings()
            return table(self.torch.tensor(list(ids), dtype=self.torch.long)).numpy()

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int, stop_ids: Sequence[int]) -> Iterator[int]:
        torch = self.torch
        if inputs_embeds.ndim != 2 or inputs_embeds.shape[1] != self.hidden_size:
            raise ValueError(f"inputs_embeds must be (positions, {self.hidden_size}), got {inputs_embeds.shape}")
        stops = set(stop_ids)
        with torch.no_grad():
            out = self.model(inputs_embeds=torch.from_numpy(inputs_embeds)[None], use_cache=True)
            for _ in range(max_new_tokens):
                token = int(out.logits[0, -1].argmax())
                if token in stops:
                    return
                yield token
                out = self.model(input_ids=torch.tensor([[token]]), cache=out.cache,
                                 use_cache=True)


def load_llm(bundle: Bundle, threads: int | None = None) -> LLM:
    meta = bundle.manifest["llm"]
    runtime = meta["runtime"]
    if runtime == "torch":
        return TorchLLM(bundle.path / meta["dir"], threads)
    if runtime == "onnx":
        from tympan.runtime.onnx_llm import OnnxLLM

        return OnnxLLM(bundle.path / meta["dir"], meta["onnx"], threads=threads)
    raise BundleError(f"{bundle.path}: unknown LLM runtime {runtime!r} (torch, onnx)")
