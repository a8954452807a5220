"""What passes between a session and its codec, in no protocol's words.

Commands come from the client (a codec parses its frames into them, or issues them on connect: its
`greeting`): `Open` first, then `Configure`, `Audio` and `End` in any order. Events go to the client (a
codec renders them into its frames); `Partial` and `Final` go to every sink (sinks.py) as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tympan.daemon.protocol import ErrorCode, Request
from tympan.runtime.whisper import Word

# -- commands: client -> session ---------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Start the session (the daemon may refuse it): its request, and the client's id for it, if any."""

    request: Request
    session_id: str | None = None


@dataclass(frozen=True)
class Configure:
    """Change the request for the utterances that start from now on.

    `update` maps the current request to the new one, by the protocol's rules; it raises
    ProtocolError for a change that is not allowed (the session goes on with its request)."""

    update: Callable[[Request], Request]


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono float32 samples at `sample_rate`; the first Audio of a session fixes the rate."""

    samples: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class End:
    """The audio is over: end the open utterance, wait for the finals, say Done."""


Command = Open | Configure | Audio | End

# -- events: session -> client (and sinks) ----------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    session_id: str
    request: Request
    model: dict[str, Any]  # what the bundle is and can do (JSON)
    limits: dict[str, Any]  # the limits a client must respect (JSON)


@dataclass(frozen=True)
class Configured:
    """A Configure was applied: `request` is what the utterances from now on get."""

    request: Request


@dataclass(frozen=True)
class Onset:
    """Utterance `segment_id` has started, `start` seconds into the stream (its Endpoint or Lost follows)."""

    segment_id: int
    start: float


@dataclass(frozen=True)
class Partial:
    """The newest hypothesis of an utterance still going on; its first `stable_len` characters stay."""

    segment_id: int
    seq: int
    text: str
    stable_len: int
    start: float
    end: float


@dataclass(frozen=True)
class Translation:
    """A final's answer while the text LLM writes it from what was heard (a translation; an answer to a question;
    a custom instruction's result): `source` is the heard text, whole from the first event on, `text` the answer
    so far ("" when the first event goes out before the first token). Sent once the final is confirmed; the Final
    follows with the whole answer."""

    segment_id: int
    seq: int
    source: str
    text: str


@dataclass(frozen=True)
class Final:
    """The text of an utterance (may be empty: one was heard, nothing recognised). `end` is the end of
    speech; `latency_ms` runs from its arrival to this final (None when the arrival is not known)."""

    segment_id: int
    text: str
    task: str
    target_lang: str
    start: float
    end: float
    latency_ms: int | None
    # Its words with their times in stream seconds, where the request asked for them and the hearing gives them.
    words: tuple[Word, ...] = ()
    # What was heard, where the text is an answer the text LLM wrote from it (see Translation).
    source: str | None = None


def final_dict(final: Final) -> dict[str, Any]:
    """A final as JSON: `words` and `source` only where it has them."""
    d = asdict(final)
    if not d["words"]:
        del d["words"]
    if d["source"] is None:
        del d["source"]
    return d


@dataclass(frozen=True)
class EndOfTurn:
    """The speaker is done with utterance `segment_id` (its final follows), or, `eager`, probably done: speech
    may still go on (then TurnResumed). `probability` is the end-of-turn model's at that moment (None where the turn
    ended on silence before a reading came)."""

    segment_id: int
    probability: float | None
    eager: bool = False


@dataclass(frozen=True)
class TurnResumed:
    """Speech went on after an eager EndOfTurn of utterance `segment_id`: whatever began on it should stop."""

    segment_id: int


TurnEvent = EndOfTurn | TurnResumed


def turn_dict(event: TurnEvent) -> dict[str, Any]:
    """An end-of-turn event as JSON, with its type."""
    if isinstance(event, EndOfTurn):
        p = None if event.probability is None else round(event.probability, 3)
        return {"type": "end_of_turn", "segment_id": event.segment_id, "probability": p, "eager": event.eager}
    return {"type": "turn_resumed", "segment_id": event.segment_id}


@dataclass(frozen=True)
class Endpoint:
    """Utterance `segment_id` has ended (its speech at `end` seconds): its Final follows, unless it is Lost."""

    segment_id: int
    end: float = 0.0


@dataclass(frozen=True)
class Lost:
    """Utterance `segment_id` ends without a Final: the gate dropped it, or (`failed`) its decode failed."""

    segment_id: int
    failed: bool = False


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class Done:
    """After End: every final is out (or, `gave_up`, the wait for them gave up); the session closes. `drained`:
    the daemon's shutdown ended the stream before the client did, so the finals cover only its start."""

    session_id: str
    drained: bool = False
    gave_up: bool = False


@dataclass(frozen=True)
class Shutdown:
    """The daemon is shutting down: the session closes once what is queued for the client is sent."""


Event = (Ready | Configured | Onset | Partial | Translation | Final | EndOfTurn | TurnResumed | Endpoint | Lost | Error
         | Done | Shutdown)
