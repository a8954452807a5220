"""An uploaded audio file (the OpenAI routes' `file`) as mono float32 at the model's rate.

libsndfile (soundfile) reads wav, flac, ogg (vorbis, opus) and mp3; what it cannot read (m4a, webm, ...) is
tried with PyAV (its own FFmpeg; the serve extra). The length is checked before the samples are decoded
where the container says it, and while decoding where it does not.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from tympan.audio import resample

log = logging.getLogger("tympan.openai")


class UploadError(ValueError):
    """The file is not audio that can be used; the message says why (it becomes a 400 answer)."""


def _too_long(seconds: float, max_s: float) -> UploadError:
    return UploadError(f"the audio is {seconds:.1f} s long; the limit is {max_s:g} s")


def _with_soundfile(data: bytes, rate: int, max_s: float) -> np.ndarray | None:
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
        if info.frames / info.samplerate > max_s:
            raise _too_long(info.frames / info.samplerate, max_s)
        audio, file_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, UploadError):
            raise
        log.debug("libsndfile cannot read the upload: %s", e)
        return None
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return resample(mono, int(file_rate), rate)


def _with_av(data: bytes, rate: int, max_s: float) -> np.ndarray:
    import av

    pieces: list[np.ndarray] = []
    total, limit = 0, int(max_s * rate)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise UploadError("the file has no audio stream")
            if container.duration is not None and container.duration / av.time_base > max_s:
                raise _too_long(container.duration / av.time_base, max_s)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += len(pieces[-1])
                    if total > limit:
                        raise _too_long(total / rate, max_s)
            for out in resampler.resample(None):  # what the resampler still holds
                pieces.append(out.to_ndarray().reshape(-1))
    except UploadError:
        raise
    except Exception as e:  # PyAV raises its own error family for anything it cannot read
        raise UploadError(f"cannot decode it as audio ({type(e).__name__}: {str(e)[:120]})") from None
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def decode_upload(data: bytes, rate: int, max_s: float) -> np.ndarray:
    """The file's audio, mono float32 in [-1, 1] at `rate`; UploadError when it is empty, unreadable or too long."""
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
