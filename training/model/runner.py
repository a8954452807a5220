"""A training checkpoint as evaluation runs it: unmerged LoRA, in PyTorch, decoded as the daemon decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tympan.manifest import Example
from tympan.runtime.ctc_lm import LM_FILE, NgramLM, beam_search
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
        # The beam search's n-gram LM (`python -m tympan.training.ngram`), as export puts it in the bundle.
        self.lm = NgramLM.load(path / LM_FILE) if (path / LM_FILE).is_file() else None
        self.sample_rate = self.model.encoder.sample_rate
        self.settings = settings

    def instruction(self, ex: Example) -> str:
        return self.model.instruction(ex)

    @property
    def second_pass(self) -> bool:
        """A checkpoint is evaluated as trained: the second pass of hearing is the bundle's (tympan export)."""
        return False

    def respond(self, audio: np.ndarray, instruction: str, task: str) -> str:
        # Stray bytes of a cut multi-byte character are dropped as the serving side drops them, so both sides
        # print the same text.
        m = self.model
        (speech,) = m.project(m.encode([audio]))
        return m.decode(m.greedy(speech, instruction, self.settings).tokens).replace("\ufffd", "").strip()

    def heard(self, audio: np.ndarray) -> str | None:
        """What a CTC bridge heard, before the LLM: greedy CTC, or the beam search with the checkpoint's n-gram LM;
        None for a dense projector."""
        from tympan.training.model.ctc import CtcBridge
        from tympan.training.model.speech_llm import ctc_posteriors, ctc_transcribe

        m = self.model
        if not isinstance(m.projector, CtcBridge) or m.vocab is None:
            return None
        if self.lm is None:
            return ctc_transcribe(m.projector, m.tokenizer, m.vocab, m.encode([audio]))[0]
        (posteriors,) = ctc_posteriors(m.projector, m.encode([audio]))
        return str(m.tokenizer.decode(beam_search(*posteriors, self.lm), skip_special_tokens=True)).strip()
