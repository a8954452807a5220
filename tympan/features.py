"""Speech feature extractors in pure numpy, matching transformers' numpy code paths.

The serving host has neither torch nor transformers, so the two front ends tympan's encoders
were trained with are reimplemented here:

- `WhisperLogMel`: `WhisperFeatureExtractor(...)(audio, padding="longest")`, transposed to
  (frames, num_mel_bins).
- `SeamlessFbank`: `SeamlessM4TFeatureExtractor(...)(audio)`, i.e. Kaldi fbank, per-utterance
  mean/variance normalisation and stacking of `stride` frames -> (frames // stride, 80 * stride).

Both are vectorised over frames (transformers loops over them in Python) but keep the reference's
dtypes and reduction layouts at each step (float64 FFT, complex64 spectrum, float32 log features and
statistics), so the output is bit-identical to transformers' numpy path in tests. Note that with torch
installed transformers' Whisper extractor uses torch.stft instead, which differs by up to ~5e-5.
`params` is JSON-serialisable and `feature_extractor(params)` rebuilds the object.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from tympan.audio import AudioError

__all__ = ["FeatureExtractor", "SeamlessFbank", "WhisperLogMel", "feature_extractor"]


class FeatureExtractor(Protocol):
    params: dict  # JSON-serialisable, everything needed to rebuild it

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at `params["sample_rate"]` -> (frames, dim) float32."""
        ...


# ---------------------------------------------------------------------------------------------
# shared helpers


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    # bool is an int subclass; True as a mel count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_audio(audio: Any) -> np.ndarray:
    """Validate one mono waveform and return it as float32 (what transformers computes from)."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"audio must be a 1-D mono waveform, got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError("audio is empty (0 samples)")
    if not np.issubdtype(audio.dtype, np.floating):
        # int16 PCM would silently give features 32768x too loud; make the caller scale it.
        raise AudioError(f"audio must be floating point in [-1, 1], got dtype {audio.dtype}")
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(f"audio has {bad} non-finite sample(s) (NaN or inf)")
    return audio


def _frames(signal: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """(num_frames, frame_length) strided view; only frames that fit entirely are kept."""
    return np.lib.stride_tricks.sliding_window_view(signal, frame_length)[::hop_length]


def _power_spectrum(frames: np.ndarray, n_fft: int) -> np.ndarray:
    """|rfft|^2 of windowed float64 frames (zero-padded to n_fft), as float64 (frames, n_fft//2 + 1).

    transformers stores the spectrum as complex64 before taking the magnitude in float64; the same
    rounding is reproduced so the power agrees to the last bit rather than to ~1e-7 relative.
    (np.abs with a float64 output is also several times faster than squaring .real and .imag.)
    """
    spec = np.fft.rfft(frames, n=n_fft, axis=-1).astype(np.complex64)
    return np.abs(spec, dtype=np.float64) ** 2


def _triangles(points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Triangular filters (len(points), len(edges) - 2): filter i rises from edges[i] to edges[i+1]
    and falls to edges[i+2]; `points` and `edges` are on the same (Hz or mel) axis."""
    rise = (points[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    fall = (edges[None, 2:] - points[:, None]) / np.diff(edges)[None, 1:]
    return np.maximum(0.0, np.minimum(rise, fall))


def _hz_to_slaney(hz: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def _slaney_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def _hz_to_kaldi_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


# ---------------------------------------------------------------------------------------------
# Whisper


class WhisperLogMel:
    """Whisper's log-mel spectrogram: (frames, num_mel_bins) float32, one frame per `hop_length` samples.

    As transformers does: centred STFT with reflect padding and a periodic Hann window, power
    spectrum, Slaney mel filterbank (0-8 kHz, area-normalised), the last STFT frame dropped,
    log10 clamped at 1e-10, dynamic range limited to 8 (80 dB) below the utterance maximum, then
    (x + 4) / 4. Audio longer than 30 s is truncated to its first 30 s, as transformers' extractor
    does (`truncation=True`, `max_length` = 30 s) -- Whisper's encoder takes at most 3000 frames.
    """

    type_name = "whisper_log_mel"
    max_seconds = 30  # transformers' chunk_length
    max_frequency = 8000.0  # fixed in transformers, whatever the sample rate

    def __init__(self, num_mel_bins: int = 80, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160):
        self.num_mel_bins = _positive_int("num_mel_bins", num_mel_bins)
        self.sample_rate = _positive_int("sample_rate", sample_rate)
        self.n_fft = _positive_int("n_fft", n_fft, minimum=2)
        self.hop_length = _positive_int("hop_length", hop_length)
        if self.sample_rate < 2 * self.max_frequency:
            raise ValueError(f"sample_rate must be >= {2 * self.max_frequency:.0f} (mel filters reach 8 kHz), "
                             f"got {sample_rate}")
        self.max_samples = self.max_seconds * self.sample_rate

        # Periodic Hann (torch.hann_window's default): the symmetric n_fft + 1 window minus its last point.
        self.window = np.hanning(self.n_fft + 1)[:-1]
        # Filters are built on the linearly spaced FFT bin frequencies in Hz (not in mel space).
        # fft_freqs spans 0..sample_rate // 2 as transformers' filter bank does.
        bins = np.linspace(0.0, self.sample_rate // 2, self.n_fft // 2 + 1)
        low, high = _hz_to_slaney(np.array([0.0, float(self.max_frequency)]))
        edges_hz = _slaney_to_hz(np.linspace(low, high, self.num_mel_bins + 2))
        filters = _triangles(bins, edges_hz)
        # Slaney area normalisation: each triangle scaled by 2 / its width in Hz.
        filters *= 2.0 / (edges_hz[2:] - edges_hz[:-2])
        self.mel_filters = np.ascontiguousarray(filters)  # (n_fft//2 + 1, num_mel_bins), float64

    @property
    def params(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_mel_bins": self.num_mel_bins, "sample_rate": self.sample_rate,
                "n_fft": self.n_fft, "hop_length": self.hop_length}

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for `num_samples` samples of audio (the centred STFT's count minus one)."""
        padded = min(num_samples, self.max_samples) + 2 * (self.n_fft // 2)
        return max(0, (padded - self.n_fft) // self.hop_length)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = _check_audio(audio)
        if self.num_frames(audio.size) < 1:
            raise AudioError(f"audio too short for {self.type_name}: {audio.size} samples give no frame "
                             f"(hop_length is {self.hop_length})")
        audio = audio[: self.max_samples]
        # Centre frame t on sample t * hop; numpy's reflect mode also copes with audio shorter
        # than the pad (it reflects repeatedly), exactly as the reference's np.pad does.
        half = self.n_fft // 2
        padded = np.pad(audio, (half, half), mode="reflect").astype(np.float64)
        # transformers drops the STFT's last frame; the view makes not computing it free.
        frames = _frames(padded, self.n_fft, self.hop_length)[:-1]
        power = _power_spectrum(frames * self.window, self.n_fft)
        mel = np.maximum(power @ self.mel_filters, 1e-10)
        log_spec = np.log10(mel).astype(np.float32)
        # Range limiting and scaling happen in float32 in the reference, so they do here too.
        log_spec = np.maximum(log_spec, log_spec.max() - np.float32(8.0))
        return np.ascontiguousarray((log_spec + np.float32(4.0)) / np.float32(4.0))

    def __repr__(self) -> str:
        return f"WhisperLogMel({', '.join(f'{k}={v}' for k, v in self.params.items() if k != 'type')})"


# ---------------------------------------------------------------------------------------------
# SeamlessM4T


class SeamlessFbank:
    """SeamlessM4T's input features: (frames // stride, num_mel_bins * stride) float32.

    Kaldi-style fbank as transformers computes it: samples scaled to the int16 range, 25 ms frames
    (400 samples) every 10 ms (160 samples, not scaled with sample_rate, as in transformers), per-frame
    DC removal, pre-emphasis 0.97, Povey window, 512-point FFT, power spectrum, Kaldi-mel triangular
    filters (20 Hz to Nyquist, triangular in mel space), natural log floored at float32 epsilon.
    Then each mel bin is normalised to zero mean and unit (ddof=1) variance over the utterance, the
    frame count is padded with zero frames to an even number (transformers' pad_to_multiple_of=2),
    cut to a multiple of `stride`, and every `stride` consecutive frames are concatenated.
    """

    type_name = "seamless_fbank"
    frame_length = 400
    hop_length = 160
    n_fft = 512
    preemphasis = 0.97
    log_floor = float(np.finfo(np.float32).eps)  # 1.1920929e-07, Kaldi's default energy floor for logs
    pad_to_multiple_of = 2  # the default of SeamlessM4TFeatureExtractor.__call__, independent of stride

    def __init__(self, num_mel_bins: int = 80, sample_rate: int = 16000, stride: int = 2):
        self.num_mel_bins = _positive_int("num_mel_bins", num_mel_bins)
        self.sample_rate = _positive_int("sample_rate", sample_rate)
        self.stride = _positive_int("stride", stride)
        if self.sample_rate // 2 <= 20:
            raise ValueError(f"sample_rate must be > 40 (mel filters start at 20 Hz), got {sample_rate}")

        # Povey window: a symmetric Hann raised to 0.85.
        self.window = np.hanning(self.frame_length) ** 0.85
        # Kaldi builds the triangles in mel space: both the bin positions and the filter edges are mels.
        bin_mels = _hz_to_kaldi_mel(np.arange(self.n_fft // 2 + 1) * (self.sample_rate / self.n_fft))
        edges = np.linspace(_hz_to_kaldi_mel(20.0), _hz_to_kaldi_mel(self.sample_rate // 2), self.num_mel_bins + 2)
        self.mel_filters = np.ascontiguousarray(_triangles(bin_mels, edges))  # (257, num_mel_bins), float64

    @property
    def params(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_mel_bins": self.num_mel_bins, "sample_rate": self.sample_rate,
                "stride": self.stride}

    @property
    def min_samples(self) -> int:
        """Shortest audio accepted: two fbank frames (one frame has no ddof=1 variance: NaN in the
        reference) and enough padded frames for at least one stacked output frame."""
        samples = self.frame_length + self.hop_length
        while self.num_frames(samples) < 1:
            samples += self.hop_length
        return samples

    def num_frames(self, num_samples: int) -> int:
        """Output frames (after stacking) produced for `num_samples` samples of audio."""
        fbank = max(0, 1 + (num_samples - self.frame_length) // self.hop_length)
        padded = -(-fbank // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return padded // self.stride

    def _log_mel(self, audio: np.ndarray) -> np.ndarray:
        """Un-normalised log-mel fbank of validated float32 audio, (num_mel_bins, frames) float32."""
        # Kaldi works on int16-scaled samples; the scaling is exact in float32 (a power of two).
        x = (audio * np.float32(32768.0)).astype(np.float64)
        frames = _frames(x, self.frame_length, self.hop_length)
        frames = frames - frames.mean(axis=1, keepdims=True)
        # Pre-emphasis within each frame; Kaldi treats the sample before the first as the first itself.
        # In place on one buffer (same operation order as the reference: x[i] - (0.97 * x[i-1])).
        buf = np.empty_like(frames)
        np.multiply(frames[:, :-1], self.preemphasis, out=buf[:, 1:])
        np.subtract(frames[:, 1:], buf[:, 1:], out=buf[:, 1:])
        np.multiply(frames[:, 0], 1.0 - self.preemphasis, out=buf[:, 0])
        buf *= self.window
        power = _power_spectrum(buf, self.n_fft)
        mel = np.maximum(self.mel_filters.T @ power.T, self.log_floor)
        return np.log(mel).astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = _check_audio(audio)
        if audio.size < self.min_samples:
            raise AudioError(f"audio too short for {self.type_name}: {audio.size} samples, "
                             f"need at least {self.min_samples}")
        # Mel-major, so time is the contiguous axis: the reference sums its float32 statistics along
        # a contiguous axis too (numpy then sums pairwise), and only the same layout gives the same
        # bits -- reducing over a strided axis or in float64 differs by up to ~5e-6.
        feats = self._log_mel(audio)
        # Normalisation in float32 with ddof=1 (torch's default), as the reference computes it.
        feats = (feats - feats.mean(axis=1, keepdims=True)) / np.sqrt(
            feats.var(axis=1, ddof=1, keepdims=True) + np.float32(1e-7))
        n = feats.shape[1]
        padded = math.ceil(n / self.pad_to_multiple_of) * self.pad_to_multiple_of
        keep = padded - padded % self.stride
        out = np.zeros((keep, self.num_mel_bins), dtype=np.float32)
        out[: min(n, keep)] = feats.T[:keep]
        return out.reshape(keep // self.stride, self.num_mel_bins * self.stride)

    def __repr__(self) -> str:
        return f"SeamlessFbank({', '.join(f'{k}={v}' for k, v in self.params.items() if k != 'type')})"


# ---------------------------------------------------------------------------------------------
# rebuilding from params

_TYPES: dict[str, type[WhisperLogMel] | type[SeamlessFbank]] = {
    WhisperLogMel.type_name: WhisperLogMel,
    SeamlessFbank.type_name: SeamlessFbank,
}
_ARGS: dict[str, tuple[str, ...]] = {
    WhisperLogMel.type_name: ("num_mel_bins", "sample_rate", "n_fft", "hop_length"),
    SeamlessFbank.type_name: ("num_mel_bins", "sample_rate", "stride"),
}


def feature_extractor(params: dict) -> WhisperLogMel | SeamlessFbank:
    """Rebuild an extractor from its `.params`.

    Missing arguments take the constructor defaults; an unknown "type", an unknown key or a bad
    value raises ValueError naming the key.
    """
    if not isinstance(params, dict):
        raise ValueError(f"feature params must be a dict, got {type(params).__name__}")
    kind = params.get("type")
    if kind not in _TYPES:
        raise ValueError(f"params['type'] must be one of {sorted(_TYPES)}, got {kind!r}")
    allowed = _ARGS[kind]
    unknown = sorted(k for k in params if k != "type" and k not in allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params for {kind!r}; allowed: {list(allowed)}")
    return _TYPES[kind](**{k: params[k] for k in allowed if k in params})
