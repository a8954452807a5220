"""A training checkpoint's LLM (unmerged LoRA, PyTorch) as the runtime's decode loop drives it
(`tympan.runtime.decode.StepLLM`), so a checkpoint and the bundle exported from it decode through the same loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


class CheckpointLLM:
    """`embed`, `prefill`, `step` over a (PEFT) causal LM; the state is its KV cache. Numpy in and out, float32;
    the model runs in its own dtype on its own device."""

    def __init__(self, llm: nn.Module) -> None:
        self.llm = llm
        table = llm.get_input_embeddings()
        self.hidden_size = int(table.weight.shape[1])
        self.device = table.weight.device
        self.dtype = table.weight.dtype

    @torch.no_grad()
    def embed(self, ids: Sequence[int]) -> np.ndarray:
        rows = self.llm.get_input_embeddings()(torch.tensor(list(ids), dtype=torch.long, device=self.device))
        return rows.float().cpu().numpy()

    @torch.no_grad()
    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, Any]:
        embeds = torch.from_numpy(inputs_embeds).to(self.device, self.dtype)[None]
        out = self.llm(inputs_embeds=embeds, use_cache=True)
        return out.logits[0, -1].float().cpu().numpy(), out.cache

    @torch.no_grad()
    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        out = self.llm(input_ids=torch.tensor([[token]], device=self.device), cache=state, use_cache=True)
        return out.logits[0, -1].float().cpu().numpy(), out.cache
