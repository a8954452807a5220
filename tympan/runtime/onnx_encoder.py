"""The ONNX encoder + projector of a bundle: audio -> LLM input embeddings, numpy and onnxruntime only.

A CTC bridge's graph also gives each CTC frame's best label: `encode` returns their greedy
collapse (repeats merged, blanks dropped) as LLM token ids, what was heard, with no LLM decode; and
each frame's best labels with their log-probabilities, for the beam search with an n-gram LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tympan.audio import AudioError
from tympan.features import feature_extractor
from tympan.runtime.bundle import Bundle
from tympan.runtime.bundle_manifest import BundleError


def pad_features(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(time, dim) arrays -> zero-padded (batch, frames, dim) float32 and int64 lengths: the encoder graph's input."""
    lengths = np.array([f.shape[0] for f in features], dtype=np.int64)
    batch = np.zeros((len(features), int(lengths.max()), features[0].shape[1]), dtype=np.float32)
    for i, f in enumerate(features):
        batch[i, : f.shape[0]] = f
    return batch, lengths


def session_options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # Threads that spin between calls would burn the cores while the daemon waits for audio.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


@dataclass(frozen=True)
class Encoded:
    embeddings: np.ndarray  # (positions, hidden): what the LLM reads
    ctc_ids: list[int] | None  # greedy CTC text as LLM token ids (a CTC bridge's graph), else None
    # A CTC bridge's frames: best labels (T, K) as LLM ids, their log-probabilities (T, K), the blank's (T,).
    ctc_frames: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def collapse(labels: np.ndarray) -> list[int]:
    """Greedy CTC: frame labels (LLM ids, -1 the blank) -> repeats merged, blanks dropped."""
    out: list[int] = []
    previous = -1
    for label in labels.tolist():
        if label != previous and label != -1:
            out.append(label)
        previous = label
    return out


class OnnxEncoder:
    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None,
                 file: str | None = None) -> None:
        import onnxruntime as ort

        meta = bundle.manifest.encoder
        self.features = feature_extractor(bundle.manifest.audio.features)
        self.sample_rate = bundle.sample_rate
        self.max_samples = int(meta.max_seconds * self.sample_rate)
        self.embedding_dim = meta.embedding_dim
        path = bundle.file(file or meta.file)
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load it: {e}") from None
        names = [o.name for o in self.session.get_outputs()]
        self.gives_ctc = "ctc_labels" in names
        self.gives_ctc_frames = "ctc_top_ids" in names

    def __call__(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float32 waveforms at the bundle's rate -> one (positions, hidden) array each."""
        return [e.embeddings for e in self.encode(audios)]

    def encode(self, audios: Sequence[np.ndarray]) -> list[Encoded]:
        """Mono float32 waveforms at the bundle's rate -> embeddings, and the greedy CTC ids where the graph
        gives them."""
        for a in audios:
            if a.shape[0] > self.max_samples:
                raise AudioError(f"{a.shape[0] / self.sample_rate:.1f} s of audio exceeds the encoder's "
                                 f"{self.max_samples / self.sample_rate:.0f} s limit")
        feats, lengths = pad_features([self.features(a) for a in audios])
        out, out_lengths, *ctc = self.session.run(None, {"features": feats, "lengths": lengths})
        encoded = []
        for i, n in enumerate(out_lengths):
            if not ctc:
                encoded.append(Encoded(out[i, : int(n)], None))
                continue
            frames = int(ctc[1][i])
            top = tuple(a[i, :frames] for a in ctc[2:5]) if self.gives_ctc_frames else None
            encoded.append(Encoded(out[i, : int(n)], collapse(ctc[0][i, :frames]), top))
        return encoded
