"""A client's audio on its way to segmentation: resampled to the model's rate, its arrival times kept."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import soxr

from tympan.daemon.vad import Event, Segmenter, VadConfig


@dataclass
class Timeline:
    """Wall-clock arrival time of the stream's samples, to measure latency from the end of speech."""

    rate: int
    marks: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=8192))
    samples: int = 0

    def add(self, n: int) -> None:
        self.samples += n
        self.marks.append((self.samples, time.monotonic()))

    def arrival(self, seconds: float) -> float | None:
        target = int(seconds * self.rate)
        for end, when in self.marks:
            if end >= target:
                return when
        return None


class AudioIn:
    """Audio at `client_rate` in, segmentation events out, until `finish` ends the open utterance."""

    def __init__(self, cfg: VadConfig, client_rate: int, rate: int) -> None:
        self.rate = rate
        self.resampler = soxr.ResampleStream(client_rate, rate, 1, dtype="float32") if client_rate != rate else None
        self.segmenter: Segmenter | None = Segmenter(cfg, rate)
        self.timeline = Timeline(rate)

    @property
    def seconds(self) -> float:
        """Audio received so far."""
        return self.timeline.samples / self.rate

    def push(self, audio: np.ndarray) -> list[Event]:
        if self.segmenter is None:
            return []
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio)
        self.timeline.add(len(audio))
        return self.segmenter.push(audio)

    def finish(self) -> list[Event]:
        """End the stream (later audio is ignored); the open utterance ends or is dropped."""
        if self.segmenter is None:
            return []
        events, self.segmenter = self.segmenter.finish(), None
        return events

    def current(self) -> tuple[int, np.ndarray] | None:
        """The utterance going on, if any: (segment id, its audio so far)."""
        return None if self.segmenter is None else self.segmenter.current()

    def latency_ms(self, speech_end: float) -> int | None:
        """Milliseconds since the audio up to `speech_end` (seconds into the stream) arrived, if known."""
        arrival = self.timeline.arrival(speech_end)
        return round((time.monotonic() - arrival) * 1000) if arrival is not None else None
