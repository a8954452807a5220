"""When a turn ends: the end-of-turn model's probability at a pause, weighed by the session's preset.

An utterance pauses (vad.pause_ms of silence) and its final is read speculatively. Once the reading is there, the
turn ends as soon as the end-of-turn probability (tympan/runtime/turn.py: the words read, the prosody before the
pause, the silence so far) reaches the preset's threshold and the silence has lasted `min_silence_ms`; failing
that, at `max_silence_ms` of silence whatever the model says. The silence detection (`silence`) ends every turn at
vad.silence_ms, as before there was a model. With `eager`, an early `end_of_turn` (eager) goes out once the
probability reaches `eager_threshold`, and `turn_resumed` if speech then goes on.

    preset         threshold  min silence  max silence  eager at
    aggressive       0.5        160 ms       800 ms       0.3
    balanced         0.6        200 ms      1200 ms       0.4
    conservative     0.8        300 ms      2000 ms       0.6

The presets' figures are chosen by `benchmarks/turns.py` (docs/turns.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tympan.config import ConfigError, check, check_fields
from tympan.daemon.protocol import TURNS
from tympan.runtime.turn import FLAT, Prosody, TurnModel

DETECTIONS = ("semantic", "silence")


@dataclass(frozen=True)
class Preset:
    threshold: float
    min_silence_ms: int
    max_silence_ms: int
    eager_threshold: float


PRESETS = {
    "aggressive": Preset(0.5, 160, 800, 0.3),
    "balanced": Preset(0.6, 200, 1200, 0.4),
    "conservative": Preset(0.8, 300, 2000, 0.6),
}
assert set(TURNS) == {"silence", *PRESETS}, "protocol.TURNS names the silence endpoint and every preset"


def _preset(value: str) -> str | None:
    return None if value in PRESETS else f"must be one of {', '.join(PRESETS)}, got {value!r}"


@dataclass(frozen=True)
class TurnConfig:
    # "semantic": the end-of-turn model decides (with a preset); "silence": vad.silence_ms of silence ends a turn.
    detection: Literal["semantic", "silence"] = "semantic"
    preset: str = field(default="balanced", metadata=check(_preset))
    # Send an early, eager end_of_turn (and turn_resumed if speech goes on) to clients that do not choose.
    eager: bool = False
    # An end-of-turn model file (JSON); "" uses the one shipped with tympan.
    model: str = ""

    def __post_init__(self) -> None:
        check_fields(self, "turn")  # built in code too, not only read from TOML
        if self.detection not in DETECTIONS:
            raise ConfigError(f"turn.detection: must be one of {', '.join(DETECTIONS)}, got {self.detection!r}")

    @property
    def default_turn(self) -> str:
        """The turn setting of a session that does not choose: "silence" or the preset's name."""
        return "silence" if self.detection == "silence" else self.preset


def check_turn(turn: str) -> None:
    if turn not in TURNS:
        raise ConfigError(f"turn must be one of {', '.join(TURNS)}, got {turn!r}")


@dataclass
class Turn:
    """One utterance's end of turn: fed its pauses and readings, asked at each tick whether the turn is over.

    `decide` returns ("eager", p) once per pause when eager, ("end", p) when the turn is over (p is None where no
    reading came in time), else None."""

    turn: str  # "silence" or a preset's name
    eager: bool
    model: TurnModel
    silence_ms: int  # the silence endpoint (vad.silence_ms)
    speech_end: float | None = None  # the pause under way: where its speech ended (stream seconds)
    prosody: Prosody = FLAT
    text: str | None = None  # what the pause's speculative reading heard, once it is there
    probability: float | None = None  # the last one computed
    eager_sent: bool = False

    def __post_init__(self) -> None:
        check_turn(self.turn)

    @property
    def max_silence_ms(self) -> int:
        return self.silence_ms if self.turn == "silence" else PRESETS[self.turn].max_silence_ms

    @property
    def awaiting(self) -> bool:
        """A pause is under way and the model waits for its reading (the silence endpoint needs none)."""
        return self.turn != "silence" and self.speech_end is not None and self.text is None

    def paused(self, speech_end: float, prosody: Prosody) -> None:
        self.speech_end, self.prosody, self.text, self.probability = speech_end, prosody, None, None

    def heard(self, text: str) -> None:
        if self.speech_end is not None:
            self.text = text

    def resumed(self) -> bool:
        """Speech went on: True if an eager end of turn went out for the pause (the client must hear it resumed)."""
        sent = self.eager_sent
        self.speech_end, self.text, self.probability, self.eager_sent = None, None, None, False
        return sent

    def decide(self, now: float) -> tuple[str, float | None] | None:
        if self.speech_end is None:
            return None
        pause_s = now - self.speech_end
        if self.text is not None:
            self.probability = self.model.probability(self.text, self.prosody, pause_s)
        p = self.probability
        if pause_s * 1000 >= self.max_silence_ms:
            return "end", p
        if self.turn == "silence" or p is None:
            return None
        preset = PRESETS[self.turn]
        if p >= preset.threshold and pause_s * 1000 >= preset.min_silence_ms:
            return "end", p
        if self.eager and not self.eager_sent and p >= preset.eager_threshold:
            self.eager_sent = True
            return "eager", p
        return None
