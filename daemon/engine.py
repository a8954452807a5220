"""The inference engine: one worker thread owns the model; utterances of all sessions queue here.

The event loop never waits on the model: sessions submit jobs and get results back through
callbacks scheduled on the loop. Finals go before partials, sessions take turns (round
robin), a session's newer partial replaces its pending one, and the utterances picked for a
round are encoded together in one encoder call.

With a CTC bridge (decode.partials_from "ctc", or "auto"), a partial is the greedy CTC text of
that encoder call: no LLM decode. Partials then have one source, what was heard, and the final's
tokens are not streamed as partials, so a display never flips between the heard words and the
LLM's answer (a translation, say); the final follows at once.

With a second pass of hearing (the bundle's Whisper decoder), a final is Whisper's reading of the utterance: ASR
serves its words (with their times when the request asks), the other tasks and custom instructions give them to
the bundle's text LLM, prompted with its chat template (or, in a bundle without one, to the speech LLM through the
text bridge). A text LLM's answer streams: the job hears of the heard text first (`on_source`), then of the answer
so far after each token (`on_text`), whatever the partials' source. Where the first pass (the CTC text of the same
encoder call) heard nothing, or Whisper's guard refuses its reading (silence, a loop), the final is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tympan.config import ConfigError
from tympan.daemon.protocol import Request, with_context
from tympan.daemon.settings import DecodeConfig
from tympan.runtime.decode import Stop
from tympan.runtime.onnx_encoder import Encoded
from tympan.runtime.prompt import Prompts
from tympan.runtime.speech_model import SpeechModel
from tympan.runtime.whisper import Word

log = logging.getLogger("tympan.engine")


@dataclass(eq=False)
class Job:
    session_key: str  # the session's internal key (client-chosen session ids may repeat)
    segment_id: int
    kind: str  # "partial" | "final"
    audio: np.ndarray
    request: Request
    # Called on the event loop: on_text(text_so_far) while decoding a final; on_done(text, stats).
    on_done: Callable[[str, dict[str, Any]], None]
    on_text: Callable[[str], None] | None = None
    # Called on the event loop with what a final's second pass heard, before a text LLM answers from it.
    on_source: Callable[[str], None] | None = None
    cancelled: bool = False
    # False once only what the final's second pass heard is wanted (a speculation speech resumed after: it anchors
    # the partials, its answer would be thrown away): the LLM's answer is cut short, or not begun.
    answer_wanted: bool = True
    submitted: float = field(default_factory=time.monotonic)

    def release(self) -> None:
        """The engine is done with this job (run or dropped): let go of its callbacks. They close over the
        session, and a final's over the job itself, so a job that kept them would hold its whole session,
        audio included, in a reference cycle until the garbage collector's next full pass."""
        self.on_done, self.on_text, self.on_source = _released, None, None


def instruction_for(prompts: Prompts, r: Request) -> str:
    """What the model is told for a request: its own instruction or the bundle's for its task, then the names and
    terms to expect (`context`: Wyoming's transcript_names/terms, OpenAI's prompt), if any."""
    return with_context(r.instruction or prompts.instruction(r.task, r.target_lang, r.question), r.context)


def _released(*_: Any) -> None:
    """The callback of a released job: never called, the engine has delivered all it had."""


class Engine:
    def __init__(self, model: SpeechModel, cfg: DecodeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.cfg = cfg  # its limits and loop guard go to the model's decode loop as they are
        if cfg.partials_from == "ctc" and not model.hears:
            raise ConfigError(f"decode.partials_from = \"ctc\": the bundle's encoder gives no CTC text (bridge "
                              f"{model.bundle.manifest.encoder.bridge!r}); use \"llm\" or \"auto\"")
        self.ctc_partials = cfg.partials_from != "llm" and model.hears
        if not self.ctc_partials:
            # LLM partials: the speech LLM is loaded now, not at the first partial on the worker thread (a bundle
            # with a text LLM loads it on first use).
            _ = model.llm
        self.loop = loop
        self._cv = threading.Condition()
        self._finals: OrderedDict[str, list[Job]] = OrderedDict()  # session -> finals, oldest first
        self._partials: OrderedDict[str, Job] = OrderedDict()  # session -> its latest partial
        self._stopping = False
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._work, name="tympan-inference", daemon=True)
        self.busy_seconds = 0.0
        self.audio_seconds = 0.0
        # Final decodes whose ASR answer was replaced by what was heard (runtime/grounding.py); speculative
        # finals the session later drops are counted too: the engine does not know which are confirmed.
        self.answers_replaced = 0
        # Final decodes the second pass of hearing refused (silence or noise it would have written words for, a
        # loop), and those whose first pass heard nothing; speculative ones included, as above.
        self.finals_refused = 0
        self.on_stats: Callable[[dict[str, Any]], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop now: the drain is over, so queued work is dropped and running decodes are cut short."""
        with self._cv:
            self._stopping = True
            self._finals.clear()
            self._partials.clear()
            for job in self._running:
                job.cancelled = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    @property
    def pending_finals(self) -> int:
        with self._cv:
            return sum(1 for jobs in self._finals.values() for j in jobs if not j.cancelled)

    def submit(self, job: Job) -> None:
        with self._cv:
            if job.kind == "final":
                self._finals.setdefault(job.session_key, []).append(job)
                # A final supersedes the pending partial of the same session, and preempts partials
                # being decoded: under load, finals keep their latency and partials are shed.
                self._partials.pop(job.session_key, None)
                for running in self._running:
                    if running.kind == "partial":
                        running.cancelled = True
            else:
                old = self._partials.pop(job.session_key, None)
                if old is not None:
                    old.cancelled = True
                self._partials[job.session_key] = job
            self._cv.notify()

    def cancel_session(self, session_key: str) -> None:
        """Forget a session's partials (its finals still run: they may go to MQTT)."""
        with self._cv:
            job = self._partials.pop(session_key, None)
            if job is not None:
                job.cancelled = True

    # -- worker thread ----------------------------------------------------------------------

    def _next_round(self) -> list[Job]:
        """Up to max_batch jobs, one per session, finals first, sessions in turn."""
        batch: list[Job] = []
        for sid in list(self._finals):
            jobs = self._finals[sid]
            while jobs and jobs[0].cancelled:
                jobs.pop(0).release()
            if jobs:
                batch.append(jobs.pop(0))
            if not jobs:
                del self._finals[sid]
            else:
                self._finals.move_to_end(sid)  # served: to the back of the line
            if len(batch) == self.cfg.max_batch:
                return batch
        if batch:
            # Finals waiting: no partial in this round, so the next final does not queue behind them.
            return batch
        for sid in list(self._partials):
            if len(batch) == self.cfg.max_batch:
                break
            job = self._partials.pop(sid)
            if not job.cancelled:
                batch.append(job)
        return batch

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._finals and not self._partials:
                    self._cv.wait()
                if self._stopping and not self._finals:
                    return
                batch = self._next_round()
                self._running = batch
            if batch:
                self._run(batch)
                for job in batch:
                    job.release()

    def _run(self, batch: list[Job]) -> None:
        """Encode the round together, then decode each job; a failure fails only the jobs it hits."""
        started = time.monotonic()
        t0 = time.perf_counter()
        try:
            encoded = self.model.encode([j.audio for j in batch])
        except Exception:  # a model failure must not kill the worker
            log.exception("encoding failed")
            for job in batch:
                self._deliver(job.on_done, "", {"error": "internal"})
            return
        encode_s = time.perf_counter() - t0
        for job, enc in zip(batch, encoded, strict=True):
            if job.cancelled:
                continue
            t1 = time.perf_counter()
            try:
                text, words, heard, source, read = self._decode(job, enc)
            except Exception:
                log.exception("decoding failed (session %s, segment %d)", job.session_key, job.segment_id)
                self._deliver(job.on_done, "", {"error": "internal"})
                continue
            work = time.perf_counter() - t1 + encode_s / len(batch)
            self.busy_seconds += work
            seconds = len(job.audio) / self.model.sample_rate
            if job.kind == "final" and not job.cancelled:
                # Real-time factor: audio counted once, when its final is decoded (not per re-decode).
                self.audio_seconds += seconds
            stats = {"kind": job.kind, "audio_s": seconds, "compute_s": work, "batch": len(batch),
                     "queued_s": started - job.submitted, "words": words, "read": read}
            if heard is not None:
                stats["heard"] = heard
            if source is not None:
                stats["source"] = source
            if not job.cancelled:
                self._deliver(job.on_done, text, stats)
            if self.on_stats is not None:
                self._deliver(self.on_stats, stats)

    def _decode(self, job: Job, encoded: Encoded) -> tuple[str, tuple[Word, ...], str | None, str | None, str]:
        """The job's text; its words' times (seconds from the utterance's start) where the final has them; for a
        final read by the second pass of hearing, what it heard (for any task; "" where the reading is not sure
        enough of itself to be shown as stable), else None; and where a text LLM answered, the heard text it
        answered from (the final's source), else None; and the English words heard, for the end of turn (the second
        pass's reading, "" where it was refused; without one, an ASR final's text, else "")."""
        if self.ctc_partials and job.kind == "partial":
            heard_now = self.model.heard(encoded, with_lm=False)
            return heard_now, (), None, None, heard_now  # at once; the final reads it with the LM
        hearing = self.model.hearing
        if job.kind != "final" or hearing is None:
            text = self._answer(job, encoded, encoded.embeddings)
            # An answer (a translation) is not what was said: the end of turn then goes on prosody and silence.
            said = text if job.request.task == "asr" and job.request.instruction is None else ""
            return text, (), None, None, said
        r = job.request
        heard = self.model.read(job.audio, encoded, terms=r.context, word_times=r.word_times)
        shown = heard.text if hearing.settled(heard) else ""
        if heard.refused is not None:
            self.finals_refused += 1
            log.info("session %s segment %d: the second pass refused its reading (%s)", job.session_key,
                     job.segment_id, heard.refused)
            return "", (), shown, None, ""
        if r.task == "asr" and r.instruction is None:
            return heard.text, heard.words, shown, None, heard.text
        if not job.answer_wanted:
            return "", (), shown, None, heard.text
        if self.model.text_llm is not None:
            return self._answer_text(job, heard.text), (), shown, heard.text, heard.text
        return self._answer(job, encoded, self.model.text_bridge(heard.text)), (), shown, None, heard.text

    def _answer_text(self, job: Job, heard: str) -> str:
        """The text LLM's answer to the job's request about what was heard, streamed as it is decoded."""
        text_llm = self.model.text_llm
        assert text_llm is not None
        r = job.request
        if job.on_source is not None:
            self._deliver(job.on_source, heard)
        shown = ""

        def show(tokens: Sequence[int]) -> None:
            nonlocal shown
            text = text_llm.decode(tokens)
            if text != shown and job.on_text is not None:
                shown = text
                self._deliver(job.on_text, text)

        instruction = r.instruction or text_llm.instruction(r.task, r.target_lang, r.question)
        decoded = text_llm.answer(instruction, heard, self.cfg,
                                  cancelled=lambda: job.cancelled or not job.answer_wanted, on_token=show)
        if decoded.stop is Stop.LOOP:
            log.info("session %s segment %d: output looped; cut", job.session_key, job.segment_id)
        return text_llm.decode(decoded.tokens)

    def _answer(self, job: Job, encoded: Encoded, speech: np.ndarray) -> str:
        """The LLM's answer to the job's request for `speech` (embeddings), streamed as it is decoded."""
        prompts = self.model.prompts
        instruction = instruction_for(prompts, job.request)
        shown = ""

        def show(tokens: Sequence[int]) -> None:
            nonlocal shown
            text = prompts.decode(list(tokens))  # an unfinished UTF-8 character waits for its bytes
            if text != shown and job.on_text is not None:
                shown = text
                self._deliver(job.on_text, text)

        stream = job.on_text is not None and not self.ctc_partials
        decoded = self.model.decode(speech, instruction, self.cfg,
                                    cancelled=lambda: job.cancelled or not job.answer_wanted,
                                    on_token=show if stream else None)
        if decoded.stop is Stop.LOOP:
            log.info("session %s segment %d: output looped; cut", job.session_key, job.segment_id)
        text = prompts.decode(decoded.tokens)
        r = job.request
        if r.task == "asr" and r.instruction is None and self.model.hearing is None:
            text, replaced = self.model.ground(text, encoded, self.cfg)
            if replaced and job.kind == "final":
                self.answers_replaced += 1
                log.info("session %s segment %d: the answer departed from what was heard; the heard words "
                         "were sent", job.session_key, job.segment_id)
        return text

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            self.loop.call_soon_threadsafe(fn, *args)
