"""The bundle's LLM as the decode loop drives it (`tympan.runtime.decode.StepLLM`): `embed`, `prefill`, `step`.

Two runtimes: the merged model in PyTorch, or one ONNX graph with a KV cache (the default; no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan.runtime.bundle import Bundle
from tympan.runtime.bundle_manifest import BundleError
from tympan.runtime.decode import StepLLM


class TorchLLM:
    """The merged (LoRA folded in) causal LM in PyTorch; the state is its KV cache."""

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

    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, Any]:
        with self.torch.no_grad():
            out = self.model(inputs_embeds=self.torch.from_numpy(inputs_embeds)[None], use_cache=True)
        return out.logits[0, -1].numpy(), out.cache

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.tensor([[token]]), cache=state, use_cache=True)
        return out.logits[0, -1].numpy(), out.cache


def load_llm(bundle: Bundle, threads: int | None = None) -> StepLLM:
    meta = bundle.manifest.llm
    if meta.runtime == "torch":
        return TorchLLM(bundle.path / meta.dir, threads)
    if meta.runtime == "onnx":
        from tympan.runtime.onnx_llm import OnnxLLM

        if meta.onnx is None:
            raise BundleError(f"{bundle.path}: llm.runtime is onnx but the manifest has no llm.onnx")
        return OnnxLLM(bundle.path / meta.dir, meta.onnx, threads=threads)
    raise BundleError(f"{bundle.path}: unknown LLM runtime {meta.runtime!r} (torch, onnx)")
