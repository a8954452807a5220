"""A wire protocol over the protocol-neutral session: what a codec does, and how a session ends.

The session (session.py) reads the client's frames and gives each to its codec's `parse`, which
turns it into commands (events.py: Open first, then Configure, Audio, End) or raises: a
ProtocolError for a message the session survives (the client gets an Error event), Closing to end
the session. Everything the session has to say goes to `render` as events; a codec renders each
into zero or more frames of its own. A new protocol is a new codec, not a new session.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from tympan.daemon.events import Command, Event
from tympan.daemon.protocol import ProtocolError

# Why the session ends (Closing.reason, in protocol v1's words; a codec may word them its own way).
DONE = "done"
BAD_START = "bad start message"
OVERLOADED = "overloaded"
TOO_LONG = "session too long"
STALLED = "the model did not keep up with this session"
INTERNAL = "internal error"


class Closing(Exception):
    """End the session: close the connection with `code` (a websocket close code) and `reason`.

    `error`, when there is one, is what the client is told (in an error message, where its
    protocol has them)."""

    def __init__(self, code: int, reason: str, error: ProtocolError | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.error = code, reason, error


class Codec(ABC):
    """One client's protocol: its frames in (parse), the session's events out (render)."""

    name: ClassVar[str]  # for the log
    # How long an answer waits for a final the protocol owes the client; the wait for the finals
    # after End lasts at least this long too.
    final_wait_s: ClassVar[float] = 0.0
    # Whether `answer` answers each audio frame for the audio so far (Vosk): the session then lets a pause's reading
    # come first (audio_in.py holds the audio while it is awaited), so that the answer says where the turn ended.
    answers_frames: ClassVar[bool] = False
    # Whether the client has any use for partials; when not, none are decoded for it (they cost model time).
    partials: ClassVar[bool] = True
    # Whether the frames it renders for Translation events carry only what is new (deltas): then none of them may
    # be dropped for a slow reader, or the client's text would lose words. Whole-text events may be dropped.
    translation_deltas: ClassVar[bool] = False

    def greeting(self) -> list[Command]:
        """Commands the codec issues as the client connects, before any frame (protocols whose server speaks
        first open the session here)."""
        return []

    @abstractmethod
    def parse(self, frame: str | bytes) -> list[Command]:
        """The commands in one frame from the client; raises ProtocolError or Closing."""

    @abstractmethod
    def render(self, event: Event) -> list[str]:
        """The frames that tell the client of `event` (none, where the protocol has no words for it)."""

    @abstractmethod
    def farewell(self, closing: Closing) -> tuple[list[str], str]:
        """The frames to send before the session closes for `closing`, and the close reason."""

    async def answer(self) -> list[str]:
        """The answer to an audio frame, for protocols that answer each one (Vosk); others push events."""
        return []
