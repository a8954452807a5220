"""A training checkpoint as evaluation runs it: unmerged LoRA, in PyTorch, decoded as the daemon decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tympan.manifest import Example
from tympan.runtime.decode import DEFAULT_SETTINGS, DecodeSettings


class CheckpointRunner:
    """A training checkpoint (`SpeechLLM`), unmerged LoRA, in PyTorch, decoded as `tympan.evaluate.BundleRunner`
    decodes a bundle (by default with the daemon's limits and loop guard)."""

    def __init__(self, path: Path, threads: int | None = None, settings: DecodeSettings = DEFAULT_SETTINGS) -> None:
        import torch

        from tympan.training.model.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.model = load_checkpoint(path)
        self.sample_rate = self.model.encoder.sample_rate
        self.settings = settings

    def instruction(self, ex: Example) -> str:
        return self.model.instruction(ex)

    def respond(self, audio: np.ndarray, instruction: str) -> str:
        # Stray bytes of a cut multi-byte character are dropped as the serving side drops them, so both sides
        # print the same text.
        m = self.model
        (speech,) = m.project(m.encode([audio]))
        return m.decode(m.greedy(speech, instruction, self.settings).tokens).replace("\ufffd", "").strip()

    def heard(self, audio: np.ndarray) -> str | None:
        """The greedy CTC text of a CTC bridge (what was heard, before the LLM); None for a dense projector."""
        from tympan.training.model.ctc import CtcBridge
        from tympan.training.model.speech_llm import ctc_transcribe

        m = self.model
        if not isinstance(m.projector, CtcBridge) or m.vocab is None:
            return None
        return ctc_transcribe(m.projector, m.tokenizer, m.vocab, m.encode([audio]))[0]
