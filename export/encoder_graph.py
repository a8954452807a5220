"""Encoder + projector as one ONNX graph: features (batch, frames, dim) -> LLM input embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tympan.training.model.speech_llm import SpeechLLM, pad_sequences

OPSET = 17
INPUTS = ["features", "lengths"]
OUTPUTS = ["embeddings", "embedding_lengths"]


class EncoderProjector(nn.Module):
    def __init__(self, model: SpeechLLM) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.projector = model.projector

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, hidden_lengths = self.encoder(features, lengths)
        return self.projector(hidden, hidden_lengths)


def batch_features(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded (batch, frames, dim) float32 and int64 lengths."""
    padded, lengths = pad_sequences([torch.from_numpy(f) for f in features])
    return padded.numpy().astype(np.float32), lengths.numpy().astype(np.int64)


def export_encoder(model: SpeechLLM, path: Path, example_features: Sequence[np.ndarray]) -> None:
    """Trace with a padded batch of two different lengths, so the masked path is what is recorded."""
    if len(example_features) < 2 or len({f.shape[0] for f in example_features[:2]}) < 2:
        raise ValueError("export needs two example inputs of different lengths to trace padding")
    wrapper = EncoderProjector(model).eval()
    feats, lengths = batch_features(example_features[:2])
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (torch.from_numpy(feats), torch.from_numpy(lengths)),
            str(path),
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_axes={
                "features": {0: "batch", 1: "frames"},
                "lengths": {0: "batch"},
                "embeddings": {0: "batch", 1: "positions"},
                "embedding_lengths": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def torch_embeddings(model: SpeechLLM, features: Sequence[np.ndarray]) -> list[np.ndarray]:
    feats, lengths = batch_features(features)
    with torch.no_grad():
        out, out_lengths = EncoderProjector(model).eval()(torch.from_numpy(feats), torch.from_numpy(lengths))
    return [out[i, : int(n)].numpy() for i, n in enumerate(out_lengths)]
