"""An uploaded audio file (the OpenAI routes' `file`) as mono float32 at the model's rate.

libsndfile (soundfile) reads wav, flac, ogg (vorbis, opus) and mp3; what it cannot read (m4a, webm, ...) is
tried with PyAV (its own FFmpeg; the serve extra). A file's rate and channels are checked before anything is
decoded (at most MAX_RATE and MAX_CHANNELS: a small FLAC at 655 kHz with 8 channels would otherwise decode
to tens of GB), and so is its length where the container says it. Decoding goes block by block, each block
down-mixed and resampled at once, so memory stays near the size of the mono result, and the length is
counted as it goes (a container may lie about it).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np

log = logging.getLogger("tympan.openai")
MAX_RATE = 48000  # Hz: what microphones, phones and browsers record at
MAX_CHANNELS = 8
BLOCK = 32768  # frames decoded at a time by libsndfile


class UploadError(ValueError):
    """The file is not audio that can be used; the message says why (it becomes a 400 answer)."""


def _too_long(seconds: float, max_s: float) -> UploadError:
    return UploadError(f"the audio is {seconds:.1f} s long; the limit is {max_s:g} s")


def check_shape(rate: int, channels: int) -> None:
    """UploadError for a sample rate or channel count that is not sound people record."""
    if rate <= 0 or rate > MAX_RATE:
        raise UploadError(f"the audio's sample rate is {rate} Hz; at most {MAX_RATE} Hz is accepted")
    if channels <= 0 or channels > MAX_CHANNELS:
        raise UploadError(f"the audio has {channels} channels; at most {MAX_CHANNELS} are accepted")


class _Mono:
    """Blocks of (frames, channels) samples at `file_rate` in, down-mixed and resampled to `rate` as they come;
    UploadError once the audio is longer than `max_s`."""

    def __init__(self, file_rate: int, rate: int, max_s: float) -> None:
        import soxr

        self.file_rate, self.rate, self.max_s = file_rate, rate, max_s
        self.stream = soxr.ResampleStream(file_rate, rate, 1, dtype="float32") if file_rate != rate else None
        self.pieces: list[np.ndarray] = []
        self.frames = 0  # at the file's rate

    def add(self, block: np.ndarray) -> None:
        self.frames += len(block)
        if self.frames > self.max_s * self.file_rate:
            raise _too_long(self.frames / self.file_rate, self.max_s)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        self._keep(mono.astype(np.float32, copy=False), last=False)

    def _keep(self, mono: np.ndarray, last: bool) -> None:
        out = self.stream.resample_chunk(mono, last=last) if self.stream is not None else mono.copy()
        if len(out):
            self.pieces.append(np.asarray(out, dtype=np.float32).reshape(-1))

    def result(self) -> np.ndarray:
        self._keep(np.zeros(0, np.float32), last=True)
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)


def _blocks(f: object) -> Iterator[np.ndarray]:
    import soundfile as sf

    assert isinstance(f, sf.SoundFile)
    while True:
        block = f.read(BLOCK, dtype="float32", always_2d=True)
        if not len(block):
            return
        yield block


def _with_soundfile(data: bytes, rate: int, max_s: float) -> np.ndarray | None:
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        log.debug("libsndfile cannot read the upload: %s", e)
        return None
    with f:
        check_shape(f.samplerate, f.channels)
        if f.frames > 0 and f.frames / f.samplerate > max_s:
            raise _too_long(f.frames / f.samplerate, max_s)
        mono = _Mono(f.samplerate, rate, max_s)
        try:
            for block in _blocks(f):
                mono.add(block)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise UploadError(f"cannot decode it as audio ({str(e)[:120]})") from None
        return mono.result()


def _with_av(data: bytes, rate: int, max_s: float) -> np.ndarray:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise UploadError("the file has no audio stream")
            stream = container.streams.audio[0]
            check_shape(int(stream.codec_context.sample_rate or 0), int(stream.codec_context.channels or 0))
            if container.duration is not None and container.duration / av.time_base > max_s:
                raise _too_long(container.duration / av.time_base, max_s)
            # FFmpeg's resampler down-mixes and resamples each decoded frame (a few thousand samples).
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            mono = _Mono(rate, rate, max_s)
            for frame in container.decode(stream):
                check_shape(frame.sample_rate, len(frame.layout.channels))  # a stream may change mid-way
                for out in resampler.resample(frame):
                    mono.add(out.to_ndarray().reshape(-1, 1))
            for out in resampler.resample(None):  # what the resampler still holds
                mono.add(out.to_ndarray().reshape(-1, 1))
            return mono.result()
    except UploadError:
        raise
    except Exception as e:  # PyAV raises its own error family for anything it cannot read
        raise UploadError(f"cannot decode it as audio ({type(e).__name__}: {str(e)[:120]})") from None


def decode_upload(data: bytes, rate: int, max_s: float) -> np.ndarray:
    """The file's audio, mono float32 in [-1, 1] at `rate`; UploadError when it is empty, unreadable, too long,
    or at a rate or with channels beyond MAX_RATE and MAX_CHANNELS."""
    if not data:
        raise UploadError("the file is empty")
    audio = _with_soundfile(data, rate, max_s)
    if audio is None:
        audio = _with_av(data, rate, max_s)
    if len(audio) == 0:
        raise UploadError("the file has no audio samples")
    if len(audio) > max_s * rate:
        raise _too_long(len(audio) / rate, max_s)
    return np.clip(np.nan_to_num(audio), -1.0, 1.0).astype(np.float32, copy=False)
