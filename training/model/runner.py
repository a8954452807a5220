"""A training checkpoint as evaluation runs it: unmerged LoRA, in PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tympan.manifest import Example


class CheckpointRunner:
    """A training checkpoint (`SpeechLLM`), unmerged LoRA, in PyTorch."""

    def __init__(self, path: Path, threads: int | None = None, max_new_tokens: int | None = None) -> None:
        import torch

        from tympan.training.model.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.model = load_checkpoint(path)
        self.sample_rate = self.model.encoder.sample_rate
        self.max_new_tokens = max_new_tokens

    def instruction(self, ex: Example) -> str:
        return self.model.instruction(ex)

    def respond(self, audio: np.ndarray, instruction: str) -> str:
        # SpeechLLM.respond's steps, with a token limit; stray bytes of a cut multi-byte character
        # are dropped as the serving side drops them, so both sides print the same text.
        m = self.model
        (tokens,) = m.generate(m.project(m.encode([audio])), [instruction], self.max_new_tokens)
        return m.decode(tokens).replace("\ufffd", "").strip()
