"""Audio I/O shared by training, export and the daemon: read any WAV/FLAC, mono, at one rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tympan.errors import TympanError


class AudioError(TympanError, ValueError):
    """An audio file is missing, unreadable or not usable as speech input."""


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling (soxr) of a mono float32 signal."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio.astype(np.float32, copy=False), from_rate, to_rate).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a sound file as mono float32 in [-1, 1] at `sample_rate`.

    Multi-channel files are averaged to mono; any input rate is resampled.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot read audio: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file has no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, int(rate), sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float32 audio as 16-bit PCM WAV."""
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
