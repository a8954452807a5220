"""Encoder + projector as one ONNX graph: features (batch, frames, dim) -> LLM input embeddings.

A CTC bridge's graph also gives each CTC frame's best label as an LLM token id (-1 for the blank):
the daemon's partials are the greedy CTC text, read from the same encoder call with no LLM decode. And
each frame's TOP_LABELS best labels with their log-probabilities and the blank's: what the beam search
with the bundle's n-gram LM reads (tympan/runtime/ctc_lm.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tympan.runtime.ctc_lm import TOP_LABELS
from tympan.runtime.onnx_encoder import pad_features
from tympan.training.model.ctc import CtcBridge
from tympan.training.model.speech_llm import SpeechLLM

OPSET = 17
INPUTS = ["features", "lengths"]
OUTPUTS = ["embeddings", "embedding_lengths"]
CTC_OUTPUTS = [*OUTPUTS, "ctc_labels", "ctc_lengths", "ctc_top_ids", "ctc_top_logp", "ctc_blank_logp"]
DYNAMIC_AXES = {
    "features": {0: "batch", 1: "frames"},
    "lengths": {0: "batch"},
    "embeddings": {0: "batch", 1: "positions"},
    "embedding_lengths": {0: "batch"},
    "ctc_labels": {0: "batch", 1: "ctc_frames"},
    "ctc_lengths": {0: "batch"},
    "ctc_top_ids": {0: "batch", 1: "ctc_frames"},
    "ctc_top_logp": {0: "batch", 1: "ctc_frames"},
    "ctc_blank_logp": {0: "batch", 1: "ctc_frames"},
}


def outputs(model: SpeechLLM) -> list[str]:
    return CTC_OUTPUTS if isinstance(model.projector, CtcBridge) else OUTPUTS


class EncoderProjector(nn.Module):
    def __init__(self, model: SpeechLLM) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.projector = model.projector

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden, hidden_lengths = self.encoder(features, lengths)
        if not isinstance(self.projector, CtcBridge):
            return self.projector(hidden, hidden_lengths)
        logits, frames = self.projector.logits(hidden, hidden_lengths)
        embeddings, counts = self.projector.segments(logits, frames)
        blank = torch.full((1,), -1, dtype=torch.long, device=logits.device)
        labels = torch.cat([self.projector.vocab_ids, blank])[logits.argmax(-1)]
        return embeddings, counts, labels, frames, *self.projector.top_labels(logits, TOP_LABELS)


def export_encoder(model: SpeechLLM, path: Path, example_features: Sequence[np.ndarray]) -> None:
    """Trace with a padded batch of two different lengths, so the masked path is what is recorded."""
    if len(example_features) < 2 or len({f.shape[0] for f in example_features[:2]}) < 2:
        raise ValueError("export needs two example inputs of different lengths to trace padding")
    wrapper = EncoderProjector(model).eval()
    feats, lengths = pad_features(example_features[:2])
    names = outputs(model)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (torch.from_numpy(feats), torch.from_numpy(lengths)),
            str(path),
            input_names=INPUTS,
            output_names=names,
            dynamic_axes={k: v for k, v in DYNAMIC_AXES.items() if k in INPUTS or k in names},
            opset_version=OPSET,
            dynamo=False,
        )


def torch_embeddings(model: SpeechLLM, features: Sequence[np.ndarray]) -> list[np.ndarray]:
    feats, lengths = pad_features(features)
    with torch.no_grad():
        out, out_lengths, *_ = EncoderProjector(model).eval()(torch.from_numpy(feats), torch.from_numpy(lengths))
    return [out[i, : int(n)].numpy() for i, n in enumerate(out_lengths)]
