"""A client's audio on its way to segmentation: resampled to the model's rate, its arrival times kept, and held
back while the end of turn waits for a reading.

At a pause the end of turn needs the speculative final's reading (turn.py). A microphone sends the pause's
silence while it is read, and the decision is taken for the silence so far when the reading comes. A client that
sends faster than real time (a file) would be past the pause, into the next sentence, before the reading came, and
its turns would depend on the machine's speed. So while a reading is awaited the audio received waits here (`held`),
and goes on to the segmenter a frame at a time once the reading is in: the same turns whatever the pace. A session
reads no more from a client holding `HOLD_MAX_S` (backpressure); only if that wait outlasts limits.idle_timeout_s
does the audio go on without the reading, and that pause then ends at its preset's longest silence.
"""

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


HOLD_MAX_S = 8.0  # audio held for one reading at most


class AudioIn:
    """Audio at `client_rate` in (`receive`), segmentation events out (`segment`), until `finish` ends the open
    utterance."""

    def __init__(self, cfg: VadConfig, client_rate: int, rate: int, turn_silence_ms: int | None = None) -> None:
        self.rate = rate
        self.resampler = soxr.ResampleStream(client_rate, rate, 1, dtype="float32") if client_rate != rate else None
        self.segmenter: Segmenter | None = Segmenter(cfg, rate, turn_silence_ms)
        self.piece = rate * cfg.frame_ms // 1000  # segmented a frame at a time: each frame is a tick of the turn
        self.timeline = Timeline(rate)
        self.held: deque[np.ndarray] = deque()  # received, not yet segmented
        self.held_samples = 0
        self.segmented = 0  # samples the segmenter has had

    @property
    def seconds(self) -> float:
        """Audio received so far."""
        return self.timeline.samples / self.rate

    @property
    def segmented_seconds(self) -> float:
        """Audio segmented so far: the segmenter's clock."""
        return self.segmented / self.rate

    @property
    def holding_too_long(self) -> bool:
        return self.held_samples > HOLD_MAX_S * self.rate

    def receive(self, audio: np.ndarray) -> None:
        """Take a client's chunk (its arrival time noted); `segment` feeds it on."""
        if self.segmenter is None:
            return
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio)
        self.timeline.add(len(audio))
        if len(audio):
            self.held.append(audio)
            self.held_samples += len(audio)

    def segment(self) -> list[Event] | None:
        """Segment the oldest frame's worth of audio held: its events, or None when nothing is held."""
        if self.segmenter is None or not self.held:
            return None
        audio = self.held.popleft()
        if len(audio) > self.piece:
            self.held.appendleft(audio[self.piece:])
            audio = audio[:self.piece]
        self.held_samples -= len(audio)
        self.segmented += len(audio)
        return self.segmenter.push(audio)

    def push(self, audio: np.ndarray) -> list[Event]:
        """Receive and segment at once (what is held goes first)."""
        self.receive(audio)
        events: list[Event] = []
        while (more := self.segment()) is not None:
            events += more
        return events

    def finish(self) -> list[Event]:
        """End the stream (later audio is ignored): what is held is segmented, the open utterance ends or is
        dropped."""
        if self.segmenter is None:
            return []
        events = self.push(np.zeros(0, np.float32))
        events += self.segmenter.finish()
        self.segmenter = None
        return events

    def end_turn(self) -> list[Event]:
        """End the paused utterance now: the speaker is done (Segmenter.end_turn)."""
        return [] if self.segmenter is None else self.segmenter.end_turn()

    def current(self) -> tuple[int, np.ndarray] | None:
        """The utterance going on, if any: (segment id, its audio so far)."""
        return None if self.segmenter is None else self.segmenter.current()

    def latency_ms(self, speech_end: float) -> int | None:
        """Milliseconds since the audio up to `speech_end` (seconds into the stream) arrived, if known."""
        arrival = self.timeline.arrival(speech_end)
        return round((time.monotonic() - arrival) * 1000) if arrival is not None else None
