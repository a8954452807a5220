"""The utterance state machine (tympan.daemon.utterance) on its own: no websocket, no model.

The engine is played by hand: a submitted Job's `on_text` and `on_done` are called as the worker
thread's results would be, in whatever order a test needs.
"""

from __future__ import annotations

import numpy as np
import pytest

from tympan.daemon.engine import Job
from tympan.daemon.events import Final, Partial, Translation
from tympan.daemon.protocol import Request
from tympan.daemon.utterance import State, TransitionError, Utterance

RATE = 16000


def audio(seconds: float) -> np.ndarray:
    return np.full(int(seconds * RATE), 0.1, dtype=np.float32)


class Session:
    """An Owner that records what the utterance asks for and says."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.partials: list[Partial] = []
        self.finals: list[Final] = []
        self.translations: list[Translation] = []
        self.failures: list[int] = []

    def submit(self, job: Job) -> None:
        self.jobs.append(job)

    def latency_ms(self, speech_end: float) -> int | None:
        return 42

    def partial(self, partial: Partial) -> None:
        self.partials.append(partial)

    def translation(self, translation: Translation) -> None:
        self.translations.append(translation)

    def final(self, final: Final) -> None:
        self.finals.append(final)

    def failed(self, segment_id: int) -> None:
        self.failures.append(segment_id)

    def finals_of(self, kind: str) -> list[Job]:
        return [j for j in self.jobs if j.kind == kind]


def utterance(request: Request | None = None) -> tuple[Utterance, Session]:
    owner = Session()
    return Utterance("key", 3, request or Request(), 1.25, owner), owner


def stream(job: Job, *texts: str) -> None:
    """The engine streaming a final decode's text, then finishing it with the last text."""
    assert job.on_text is not None
    for text in texts:
        job.on_text(text)
    job.on_done(texts[-1], {"kind": job.kind})


def test_pause_then_the_speculation_then_the_endpoint_sends_the_final_at_once() -> None:
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    [job] = s.jobs
    assert (job.kind, job.session_key, job.segment_id, len(job.audio)) == ("final", "key", 3, RATE)
    assert u.state is State.SPECULATING and u.decoding
    stream(job, "hello", "hello world")
    assert u.state is State.SPECULATED and not s.partials and not s.finals  # nothing shown before the endpoint
    u.endpoint(audio(1.0), speech_end=2.25)
    assert len(s.jobs) == 1, "the speculation covers all the speech: no second decode"
    # Its text as a last partial, then the final, with the request's task and language.
    assert [p.text for p in s.partials] == ["hello world"] and s.partials[0].end == 2.25
    assert s.finals == [Final(3, "hello world", "asr", "en", 1.25, 2.25, 42)]
    assert u.state is State.FINAL and not u.decoding


def test_the_endpoint_before_the_speculation_finishes_confirms_it_and_streams_its_text() -> None:
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    [job] = s.jobs
    assert job.on_text is not None
    job.on_text("good")  # before the endpoint: kept, not shown
    u.endpoint(audio(1.0), speech_end=2.25)
    assert u.state is State.CONFIRMED and len(s.jobs) == 1 and not job.cancelled
    assert [p.text for p in s.partials] == ["good"]
    stream(job, "good morning")
    assert [p.text for p in s.partials] == ["good", "good morning"]
    assert [p.seq for p in s.partials] == [1, 2]
    assert [f.text for f in s.finals] == ["good morning"] and u.state is State.FINAL


def test_speech_that_resumes_throws_the_speculation_away() -> None:
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    first = s.jobs[0]
    u.resume()
    assert first.cancelled and u.state is State.LISTENING and not u.decoding
    stream(first, "stale")  # a result that was already on its way
    assert not s.partials and not s.finals
    u.endpoint(audio(2.0), speech_end=3.25)
    second = s.jobs[1]
    assert len(second.audio) == 2 * RATE and u.state is State.CONFIRMED
    stream(second, "the whole utterance")
    assert [f.text for f in s.finals] == ["the whole utterance"]
    assert s.finals[0].end == 3.25


def test_a_finished_speculation_is_thrown_away_too_when_speech_resumes() -> None:
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    stream(s.jobs[0], "half")
    assert u.state is State.SPECULATED
    u.resume()
    u.pause(audio(1.5), speech_end=2.75)  # a second pause: a new speculation
    assert u.state is State.SPECULATING and len(s.jobs) == 2
    u.endpoint(audio(1.5), speech_end=2.75)
    stream(s.jobs[1], "half and more")
    assert [f.text for f in s.finals] == ["half and more"]


def test_an_endpoint_later_than_the_pause_decodes_anew() -> None:
    # The pause's speculation ended at 2.25 s, but the utterance ends at 2.5 s (speech went on without a
    # pause long enough to resume): the speculation does not cover it.
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    u.endpoint(audio(1.25), speech_end=2.5)
    old, new = s.jobs
    assert old.cancelled and not new.cancelled and len(new.audio) == int(1.25 * RATE)
    stream(old, "old")
    stream(new, "new")
    assert [f.text for f in s.finals] == ["new"]


def test_an_endpoint_without_a_pause_decodes_then() -> None:
    u, s = utterance()
    u.endpoint(audio(0.5), speech_end=1.75)
    [job] = s.jobs
    assert u.state is State.CONFIRMED and u.decoding
    stream(job, "")
    assert s.finals == [Final(3, "", "asr", "en", 1.25, 1.75, 42)]  # sent even when empty


def test_a_final_is_never_sent_twice() -> None:
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    job = s.jobs[0]
    stream(job, "once")
    u.endpoint(audio(1.0), speech_end=2.25)
    job.on_done("once", {})  # the engine reporting again
    assert job.on_text is not None
    job.on_text("once more")
    assert [f.text for f in s.finals] == ["once"] and [p.text for p in s.partials] == ["once"]
    with pytest.raises(TransitionError):
        u.endpoint(audio(1.0), speech_end=2.25)


def test_a_client_that_disconnects_mid_utterance_still_gets_its_final_decoded() -> None:
    # The session ends the stream: the open utterance gets its endpoint there. Partial decodes still
    # on their way are dropped; the final is decoded and goes out (to MQTT, if not to the client).
    u, s = utterance()
    u.maybe_partial(audio(0.7), end=1.95, interval=RATE // 2)
    [partial] = s.finals_of("partial")
    u.endpoint(audio(0.8), speech_end=2.05)
    partial.on_done("late partial", {})
    assert not s.partials
    stream(s.finals_of("final")[0], "to the end")
    assert [f.text for f in s.finals] == ["to the end"]


def test_a_dropped_utterance_cancels_its_decodes_and_says_nothing() -> None:
    u, s = utterance()
    u.maybe_partial(audio(0.6), end=1.85, interval=RATE // 2)
    u.pause(audio(0.6), speech_end=1.85)
    u.drop()
    assert u.state is State.DROPPED and s.jobs[1].cancelled and not u.decoding
    s.jobs[0].on_done("blip", {})
    stream(s.jobs[1], "blip")
    assert not s.partials and not s.finals and not s.failures
    with pytest.raises(TransitionError):
        u.pause(audio(0.7), speech_end=1.95)


@pytest.mark.parametrize("confirmed", [False, True], ids=["speculating", "confirmed"])
def test_a_failed_decode_ends_the_utterance_without_a_final(confirmed: bool) -> None:
    u, s = utterance()
    u.pause(audio(1.0), speech_end=2.25)
    if confirmed:
        u.endpoint(audio(1.0), speech_end=2.25)
    s.jobs[0].on_done("", {"error": "internal"})
    assert s.failures == [3] and not s.finals and u.state is State.FAILED and not u.decoding


def test_partials_come_every_interval_until_the_endpoint_and_pass_local_agreement() -> None:
    u, s = utterance(Request("st", "de"))
    interval = RATE // 2
    u.maybe_partial(audio(0.4), end=1.65, interval=interval)
    assert not s.jobs, "less than one interval of audio"
    u.maybe_partial(audio(0.5), end=1.75, interval=interval)
    u.maybe_partial(audio(0.7), end=1.95, interval=interval)
    u.maybe_partial(audio(1.0), end=2.25, interval=interval)
    first, second = s.finals_of("partial")
    assert len(first.audio) == RATE // 2 and len(second.audio) == RATE and first.request == Request("st", "de")
    first.on_done("guten tag", {})
    second.on_done("guten tag alle", {})
    second.on_done("", {})  # an empty hypothesis shows nothing
    assert [(p.seq, p.text, p.stable_len, p.end) for p in s.partials] == [
        (1, "guten tag", 0, 1.75), (2, "guten tag alle", len("guten tag"), 2.25)]
    assert all(p.segment_id == 3 and p.start == 1.25 for p in s.partials)
    u.endpoint(audio(1.2), speech_end=2.45)
    u.maybe_partial(audio(2.0), end=3.25, interval=interval)
    assert len(s.finals_of("partial")) == 2, "no partial decode after the endpoint"
    stream(s.finals_of("final")[0], "guten tag alle zusammen")
    assert [p.seq for p in s.partials] == [1, 2, 3]  # numbering goes on through the confirmed decode
    assert s.finals[0].target_lang == "de"


# -- with a second pass of hearing: what Whisper read is the partials' stable prefix -----------------------------


def heard_utterance() -> tuple[Utterance, Session]:
    owner = Session()
    return Utterance("key", 3, Request(), 1.25, owner, stable_from_hearing=True), owner


def test_the_first_passs_draft_is_never_stable_until_whisper_has_read_it() -> None:
    u, s = heard_utterance()
    u.maybe_partial(audio(0.6), end=1.85, interval=1)
    u.maybe_partial(audio(1.2), end=2.45, interval=1)
    for job, text in zip(s.finals_of("partial"), ["front", "front left"], strict=True):
        job.on_done(text, {"kind": "partial"})
    assert [(p.text, p.stable_len) for p in s.partials] == [("front", 0), ("front left", 0)]


def test_a_speculation_read_before_speech_resumes_anchors_the_partials() -> None:
    u, s = heard_utterance()
    u.pause(audio(1.0), speech_end=2.25)
    [spec] = s.finals_of("final")
    spec.on_done("Eight of spades.", {"kind": "final", "heard": "8 of spades,"})
    u.resume()
    assert u.anchor == ("8 of spades,", RATE)
    u.maybe_partial(audio(1.5), end=2.75, interval=1)
    [partial] = s.finals_of("partial")
    assert len(partial.audio) == RATE // 2  # the first pass reads only what came after the anchor
    partial.on_done("four of", {"kind": "partial"})
    assert (s.partials[-1].text, s.partials[-1].stable_len) == ("8 of spades, four of", len("8 of spades,"))


def test_a_speculation_still_running_when_speech_resumes_anchors_when_it_comes() -> None:
    u, s = heard_utterance()
    u.pause(audio(1.0), speech_end=2.25)
    [spec] = s.finals_of("final")
    assert spec.answer_wanted
    u.resume()
    # Still read (what it heard anchors the partials), but its answer would be thrown away: none is written.
    assert not spec.cancelled and not spec.answer_wanted and u.anchor is None
    spec.on_done("Go forward.", {"kind": "final", "heard": "Go forward."})
    assert u.anchor == ("Go forward.", RATE) and u.state is State.LISTENING and not s.finals
    # At the endpoint, a speculation still out is dropped: the final decode goes first.
    u.pause(audio(2.0), speech_end=3.25)
    u.resume()
    late = s.finals_of("final")[-1]
    u.endpoint(audio(2.5), speech_end=3.75)
    assert late.cancelled
    late.on_done("Go forward ten.", {"kind": "final", "heard": "Go forward ten."})
    assert u.anchor == ("Go forward.", RATE)


def test_a_translation_streams_its_source_then_its_words_never_as_partials() -> None:
    u, s = utterance(Request("st", "de"))
    u.pause(audio(1.0), speech_end=2.25)
    [job] = s.jobs
    assert job.on_source is not None and job.on_text is not None
    job.on_source("good morning")
    job.on_text("Guten")  # before the endpoint: kept, not shown
    assert not s.translations and not s.partials
    u.endpoint(audio(1.0), speech_end=2.25)
    job.on_text("Guten Morgen")
    job.on_done("Guten Morgen.", {"kind": "final", "source": "good morning"})
    assert [(t.source, t.text, t.seq) for t in s.translations] == [("good morning", "Guten", 1),
                                                                  ("good morning", "Guten Morgen", 2)]
    assert not s.partials, "the partials stay what was heard: a translation never replaces them"
    assert s.finals == [Final(3, "Guten Morgen.", "st", "de", 1.25, 2.25, 42, (), "good morning")]


def test_a_confirmed_translation_says_its_source_before_its_first_token() -> None:
    u, s = utterance(Request("st", "it"))
    u.endpoint(audio(1.0), speech_end=2.25)
    [job] = s.jobs
    assert job.on_source is not None
    job.on_source("hello")
    assert [(t.source, t.text) for t in s.translations] == [("hello", "")]
    job.on_done("Ciao", {"kind": "final", "source": "hello"})
    assert [f.source for f in s.finals] == ["hello"]


def test_a_speculated_translation_goes_out_as_its_final_alone_and_asr_has_no_source() -> None:
    u, s = utterance(Request("st", "zh"))
    u.pause(audio(1.0), speech_end=2.25)
    [job] = s.jobs
    job.on_source("good night")  # type: ignore[misc]
    job.on_done("晚安", {"kind": "final", "source": "good night"})
    u.endpoint(audio(1.0), speech_end=2.25)
    assert not s.translations and [(f.text, f.source) for f in s.finals] == [("晚安", "good night")]
    u, s = utterance()
    u.endpoint(audio(1.0), speech_end=2.25)
    stream(s.jobs[0], "hello")
    assert s.finals[0].source is None and not s.translations
