"""One utterance from its start to its final: speculate at a pause, confirm at the endpoint.

The final is decoded speculatively once speech pauses (vad.pause_ms), on the audio up to the
pause. Speech that resumes throws the speculation away. An endpoint (the end of turn, below, or
the segmenter's silence) with no more speech confirms it: its text goes out as soon as it is
decoded, so latency runs from the end of speech, not from the endpoint. An endpoint after more speech decodes the whole
utterance anew. Nothing of a final decode is shown before it is confirmed (it may be thrown
away); once confirmed, its text so far streams as partials. Decodes of the growing utterance
(every decode.partial_interval_ms) give partials until the endpoint; every partial passes local
agreement and is numbered (seq).

    LISTENING    --pause-->     SPECULATING  a final decode of the audio up to the pause
    SPECULATING  --decoded-->   SPECULATED   its text waits for the endpoint
    SPECULATING,
    SPECULATED   --pause-->     SPECULATING  a newer speculation replaces it
                 --resume-->    LISTENING    the speculation is cancelled or thrown away
    LISTENING,
    SPECULATING  --endpoint-->  CONFIRMED    the speculation if it covers all the speech, else a new decode
    SPECULATED   --endpoint-->  FINAL        its text is the final, at once
    CONFIRMED    --decoded-->   FINAL
    SPECULATING,
    CONFIRMED    --failed-->    FAILED       the decode failed: no final
    open         --drop-->      DROPPED      the gate took it back (open: before the endpoint)

With a second pass of hearing (`stable_from_hearing`), partials are the first pass's draft and only what Whisper
has read is shown as stable: when speech resumes after a pause whose speculative final was decoded, Whisper's
reading of the audio up to the pause becomes the partials' stable prefix (the anchor), and the first pass reads
only the audio after it. Where a text LLM answers from what was heard (a translation), the final's decode reports
the heard text first (its source) and then the answer's tokens: once confirmed they go out as Translation events,
never as partials, so the partials stay what was heard.

The end of turn (turn.py) is asked at every tick of a pause (the session's audio, and each speculation's reading):
when it says the speaker is done, the utterance asks its owner to end the turn, and the segmenter's endpoint (reason
"turn") follows at once, before vad.silence_ms. An eager end of turn goes to the owner as an EndOfTurn event; if
speech then resumes, a TurnResumed follows.

Results reach the session through its Owner; decodes go to the engine as Jobs, whose callbacks
drive the transitions `decoded` and `failed`. Results of a cancelled or replaced decode are ignored.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import numpy as np

from tympan.daemon.engine import Job
from tympan.daemon.events import EndOfTurn, Final, Partial, Translation, TurnEvent, TurnResumed
from tympan.daemon.protocol import Request
from tympan.daemon.text import LocalAgreement
from tympan.daemon.turn import Turn
from tympan.runtime.turn import FLAT, Prosody
from tympan.runtime.whisper import Word


class State(enum.Enum):
    LISTENING = "listening"
    SPECULATING = "speculating"
    SPECULATED = "speculated"
    CONFIRMED = "confirmed"
    FINAL = "final"
    FAILED = "failed"
    DROPPED = "dropped"


OPEN = frozenset({State.LISTENING, State.SPECULATING, State.SPECULATED})  # before the endpoint
DECODING = frozenset({State.SPECULATING, State.SPECULATED, State.CONFIRMED})  # a final decode runs or waits
RUNNING = frozenset({State.SPECULATING, State.CONFIRMED})  # a final decode runs


class Owner(Protocol):
    """What an utterance needs from its session."""

    def submit(self, job: Job) -> None: ...

    def latency_ms(self, speech_end: float) -> int | None:
        """Milliseconds since the audio up to `speech_end` arrived, if known."""
        ...

    def partial(self, partial: Partial) -> None: ...

    def translation(self, translation: Translation) -> None: ...

    def final(self, final: Final) -> None: ...

    def failed(self, segment_id: int) -> None:
        """The final's decode failed: the utterance is over without a final."""

    def now(self) -> float:
        """Stream seconds of audio segmented so far (the segmenter's clock)."""
        ...

    def turn(self, event: TurnEvent) -> None:
        """An eager end of turn, or speech resuming after one."""

    def end_turn(self, segment_id: int) -> None:
        """The speaker is done: end the utterance at its pause now (its endpoint follows, before this returns)."""

    def reading_in(self) -> None:
        """The reading a pause waited for is in: the audio held for it may go on."""


class TransitionError(RuntimeError):
    """An event the segmenter cannot send in this state: a bug, not bad input."""


class Utterance:
    def __init__(self, key: str, segment_id: int, request: Request, start: float, owner: Owner,
                 turn: Turn | None = None, stable_from_hearing: bool = False) -> None:
        self.key = key  # the session's engine key
        self.segment_id = segment_id
        self.request = request  # the request current when it started: later config messages do not change it
        self.start = start
        self.owner = owner
        self.state = State.LISTENING
        self.decode: Job | None = None  # the final's decode: a speculation, or the confirmed one
        self.decode_end: float | None = None  # the end of speech that decode covers
        self.decoded_text: str | None = None  # a finished speculation's text, waiting for the endpoint
        self.decoded_words: tuple[Word, ...] = ()  # and its words' times (from the utterance's start)
        self.decoded_heard: str | None = None  # and what the second pass heard, whatever the task
        self.stable_from_hearing = stable_from_hearing
        self.anchor: tuple[str, int] | None = None  # Whisper's reading of the first samples: (text, samples)
        self.anchoring: Job | None = None  # a speculation that speech resumed during: the next anchor
        self.streamed = ""  # the final decode's text so far, shown once confirmed
        self.source: str | None = None  # what the final's decode heard, where a text LLM answers from it
        self.speech_end = 0.0  # known at the endpoint
        self.agreement = LocalAgreement(request.target_lang)
        self.seq = 0
        self.partial_samples = 0  # length of the audio the last partial decode had
        self.turn = turn  # None: the segmenter's silence endpoint alone ends the utterance

    @property
    def decoding(self) -> bool:
        """A final decode runs, or its text waits to go out."""
        return self.state in DECODING

    # -- the segmenter's events ---------------------------------------------------------------------

    def pause(self, audio: np.ndarray, speech_end: float, prosody: Prosody = FLAT) -> None:
        self._expect(OPEN, "pause")
        if self.turn is not None:
            self.turn.paused(speech_end, prosody)
        self._decode_final(audio, speech_end)

    def resume(self) -> None:
        self._expect(OPEN, "resume")
        if self.state is State.SPECULATED and self.stable_from_hearing and self.decoded_heard and self.decode:
            self.anchor = (self.decoded_heard, len(self.decode.audio))
        elif self.state is State.SPECULATING and self.stable_from_hearing and self.decode is not None:
            # Its reading of the audio up to the pause is still good: it becomes the anchor when it comes. Its answer
            # (a translation) is not: the utterance goes on.
            self.anchoring, self.decode = self.decode, None
            self.anchoring.answer_wanted = False
        self._cancel()
        self.state = State.LISTENING
        if self.turn is not None and self.turn.resumed():
            self.owner.turn(TurnResumed(self.segment_id))

    def tick(self) -> None:
        """More audio came (silence, while paused): the turn may be over now."""
        if self.state in OPEN:
            self._consider_turn()

    @property
    def awaiting_reading(self) -> bool:
        """A pause waits for its speculative reading to decide the end of turn."""
        return self.state is State.SPECULATING and self.turn is not None and self.turn.awaiting

    def _heard_for_turn(self, text: str) -> None:
        if self.turn is not None:
            waited = self.turn.awaiting
            self.turn.heard(text)
            self._consider_turn()
            if waited:
                self.owner.reading_in()

    def _consider_turn(self) -> None:
        if self.turn is None:
            return
        decision = self.turn.decide(self.owner.now())
        if decision is None:
            return
        what, probability = decision
        if what == "eager":
            self.owner.turn(EndOfTurn(self.segment_id, probability, eager=True))
        else:
            self.owner.end_turn(self.segment_id)

    def endpoint(self, audio: np.ndarray, speech_end: float) -> None:
        self._expect(OPEN, "endpoint")
        self._stop_anchoring()  # the final comes first now
        self.speech_end = speech_end
        if self.decode is None or self.decode_end != speech_end:
            self._decode_final(audio, speech_end)  # speech went on after the pause, or there was none
        text = self.decoded_text
        self.state = State.CONFIRMED
        if self.source is not None and text is None:
            self._translating(self.streamed)
        elif self.streamed and self.source is None:
            self._show(self.streamed, speech_end)
        if text is not None:
            self._finish(text, self.decoded_words)

    def drop(self) -> None:
        self._expect(OPEN, "drop")
        self._stop_anchoring()
        self._cancel()
        self.state = State.DROPPED

    # -- partial decodes --------------------------------------------------------------------------------

    def maybe_partial(self, audio: np.ndarray, end: float, interval: int) -> None:
        """Decode the audio so far (it ends `end` s into the stream) for a partial, if `interval` samples came since
        the last one and the endpoint has not come yet."""
        if self.state not in OPEN or len(audio) - self.partial_samples < interval:
            return
        self.partial_samples = len(audio)
        anchor = self.anchor
        if anchor is not None and len(audio) <= anchor[1]:
            return
        rest = audio[anchor[1]:] if anchor is not None else audio
        self.owner.submit(Job(self.key, self.segment_id, "partial", rest.copy(), self.request,
                              on_done=lambda text, stats: self._partial_decoded(text, end, anchor)))

    def _partial_decoded(self, text: str, end: float, anchor: tuple[str, int] | None = None) -> None:
        if anchor is not None:
            text = f"{anchor[0]} {text}".strip()
        if self.state in OPEN and text:
            self._show(text, end)

    # -- the final's decode ---------------------------------------------------------------------------

    def _decode_final(self, audio: np.ndarray, speech_end: float) -> None:
        self._cancel()
        job = Job(self.key, self.segment_id, "final", audio.copy(), self.request,
                  on_done=lambda text, stats: self._decoded(job, text, stats),
                  on_text=lambda text: self._decoding(job, text),
                  on_source=lambda source: self._heard(job, source))
        self.decode, self.decode_end, self.streamed, self.source = job, speech_end, "", None
        self.state = State.SPECULATING
        self.owner.submit(job)

    def _stop_anchoring(self) -> None:
        if self.anchoring is not None:
            self.anchoring.cancelled = True
            self.anchoring = None

    def _cancel(self) -> None:
        if self.decode is not None:
            self.decode.cancelled = True
        self.decode = self.decode_end = self.decoded_text = self.decoded_heard = self.source = None
        self.decoded_words = ()

    def _current(self, job: Job) -> bool:
        """`job` is the final's decode, and still running."""
        return job is self.decode and not job.cancelled and self.state in RUNNING

    def _heard(self, job: Job, source: str) -> None:
        if not self._current(job):
            return
        self.source = source
        if self.state is State.CONFIRMED:
            self._translating("")
        else:
            self._heard_for_turn(source)  # the answer takes a while: the end of turn need not wait for it

    def _decoding(self, job: Job, text: str) -> None:
        if not self._current(job):
            return
        self.streamed = text
        if self.state is State.CONFIRMED:
            if self.source is not None:
                self._translating(text)
            else:
                self._show(text, self.speech_end)

    def _decoded(self, job: Job, text: str, stats: dict[str, Any]) -> None:
        if job is self.anchoring:
            self.anchoring = None
            heard = stats.get("heard")
            if self.state in OPEN and heard and (self.anchor is None or len(job.audio) > self.anchor[1]):
                self.anchor = (heard, len(job.audio))
            return
        if not self._current(job):
            return
        if stats.get("source") is not None:
            self.source = stats["source"]
        if stats.get("error"):
            self.state = State.FAILED
            self.owner.failed(self.segment_id)
        elif self.state is State.CONFIRMED:
            self._finish(text, stats.get("words", ()))
        else:
            self.decoded_text, self.decoded_words = text, stats.get("words", ())
            self.decoded_heard = stats.get("heard")
            self.state = State.SPECULATED
            self._heard_for_turn(stats.get("read", text))

    # -- results ----------------------------------------------------------------------------------------

    def _show(self, hypothesis: str, end: float) -> None:
        if self.stable_from_hearing:
            # The first pass's words are a draft: stable is what Whisper has read (an anchor), never agreement alone.
            text = hypothesis
            anchor = self.anchor[0] if self.anchor is not None else ""
            stable = len(anchor) if anchor and text.startswith(anchor) else 0
        else:
            text, stable = self.agreement.update(hypothesis)
        self.seq += 1
        self.owner.partial(Partial(self.segment_id, self.seq, text, stable, round(self.start, 3), round(end, 3)))

    def _translating(self, text: str) -> None:
        assert self.source is not None
        self.seq += 1
        self.owner.translation(Translation(self.segment_id, self.seq, self.source, text))

    def _finish(self, text: str, words: tuple[Word, ...] = ()) -> None:
        self.state = State.FINAL
        # Sent even when empty (as Vosk does): an utterance was heard, nothing was recognised.
        self.owner.final(Final(self.segment_id, text, self.request.task, self.request.target_lang,
                               round(self.start, 3), round(self.speech_end, 3), self.owner.latency_ms(self.speech_end),
                               tuple(w.shifted(self.start) for w in words), self.source))

    def _expect(self, states: frozenset[State], event: str) -> None:
        if self.state not in states:
            raise TransitionError(f"utterance {self.segment_id}: {event} while {self.state.value}")
