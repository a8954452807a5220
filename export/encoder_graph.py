"""Encoder + projector as one ONNX graph: features (batch, frames, dim) -> LLM input embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tympan.runtime.onnx_encoder import pad_features
from tympan.training.model.speech_llm import SpeechLLM

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


def export_encoder(model: SpeechLLM, path: Path, example_features: Sequence[np.ndarray]) -> None:
    """Trace with a padded batch of two different lengths, so the masked path is what is recorded."""
    if len(example_features) < 2 or len({f.shape[0] for f in example_features[:2]}) < 2:
        raise ValueError("export needs two example inputs of different lengths to trace padding")
    wrapper = EncoderProjector(model).eval()
    feats, lengths = pad_features(example_features[:2])
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
    feats, lengths = pad_features(features)
    with torch.no_grad():
        out, out_lengths = EncoderProjector(model).eval()(torch.from_numpy(feats), torch.from_numpy(lengths))
    return [out[i, : int(n)].numpy() for i, n in enumerate(out_lengths)]
