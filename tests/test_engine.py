"""The inference engine with a stand-in model: ordering, fairness, preemption, failures."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from tympan.daemon.engine import Engine, Job
from tympan.daemon.protocol import Request
from tympan.daemon.settings import DecodeConfig
from tympan.runtime.decode import greedy_decode
from tympan.runtime.onnx_encoder import Encoded

STOP = 99


class Prompts:
    max_new_tokens = 8

    def instruction(self, task: str, lang: str, question: str | None = None) -> str:
        return task

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


class GatedLLM:
    """A one-number LLM for the real decode loop: the prompt's first value 3 times, then STOP, or a failure
    when it is 13. Every model call waits for the gate."""

    hidden_size = 1

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def embed(self, ids):
        return np.zeros((len(ids), 1), np.float32)

    def prefill(self, inputs_embeds):
        value = int(inputs_embeds[0, 0])
        if value == 13:
            raise RuntimeError("model failure")
        return self._next(value, 0)

    def step(self, token, state):
        return self._next(*state)

    def _next(self, value: int, emitted: int):
        self.gate.wait(5)
        logits = np.zeros(100, np.float32)
        logits[value if emitted < 3 else STOP] = 1
        return logits, (value, emitted + 1)


class FakeModel:
    """Speech is its first sample; decoding gives it 3 times, or fails when it is 13."""

    sample_rate = 16000
    prompts = Prompts()

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    hears = False  # no CTC text: partials are decoded
    hearing = None  # no second pass: finals are the LLM's
    text_llm = None
    llm = "the speech LLM"  # the engine asks for it up front when partials come from it

    def encode(self, audios):
        self.batches.append(len(audios))
        return [Encoded(a[:1], None) for a in audios]

    def decode(self, speech, instruction, settings, *, cancelled=None, on_token=None):
        return greedy_decode(GatedLLM(self.gate), speech[None], [STOP], settings.capped(self.prompts.max_new_tokens),
                             cancelled=cancelled, on_token=on_token)

    def ground(self, answer, encoded, settings):
        return answer, False  # nothing heard to hold the answer to, as SpeechModel without a CTC bridge


def run_jobs(specs, expect, model=None, before_start=None):
    """specs: (session, kind, value); waits for the values in `expect`, plus a moment for any others;
    returns {value: (text, stats)} as delivered on the loop, and the delivery order."""

    async def main():
        loop = asyncio.get_running_loop()
        engine = Engine(model or FakeModel(), DecodeConfig(max_batch=4), loop)
        results: dict[int, tuple[str, dict]] = {}
        order: list[int] = []
        done = asyncio.Event()
        jobs = []
        for session, kind, value in specs:
            def on_done(text, stats, value=value):
                results[value] = (text, stats)
                order.append(value)
                if expect <= set(results):
                    done.set()
            jobs.append(Job(session, 0, kind, np.full(160, value, np.float32), Request(), on_done=on_done))
        for job in jobs:
            engine.submit(job)
        if before_start:
            before_start(engine, jobs)
        engine.start()
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.2)  # anything that should not come has had its chance
        engine.stop()
        return results, order

    return asyncio.run(main())


def test_a_failing_job_fails_alone() -> None:
    results, _ = run_jobs([("a", "final", 1), ("b", "final", 13), ("c", "final", 3)], {1, 13, 3})
    assert results[1] == ("1 1 1", results[1][1]) and "error" not in results[1][1]
    assert results[13][0] == "" and results[13][1] == {"error": "internal"}
    assert results[3][0] == "3 3 3"


def test_finals_before_partials_and_sessions_take_turns() -> None:
    results, order = run_jobs([("a", "partial", 7), ("a", "final", 1), ("a", "final", 2), ("b", "final", 5)],
                              {1, 2, 5})
    # a's partial is superseded by its final; a and b alternate.
    assert 7 not in results
    assert order == [1, 5, 2]


def test_a_final_preempts_a_running_partial() -> None:
    model = FakeModel()
    model.gate.clear()  # generation blocks until the gate opens

    async def main():
        engine = Engine(model, DecodeConfig(), asyncio.get_running_loop())
        got: dict[str, str] = {}
        final_done = asyncio.Event()

        def on_final(text: str, stats: dict) -> None:
            got["final"] = text
            final_done.set()

        engine.submit(Job("a", 0, "partial", np.full(160, 9, np.float32), Request(),
                          on_done=lambda text, stats: got.setdefault("partial", text)))
        engine.start()
        await asyncio.sleep(0.3)  # the partial is being decoded, waiting on the gate
        engine.submit(Job("b", 0, "final", np.full(160, 4, np.float32), Request(), on_done=on_final))
        model.gate.set()
        await asyncio.wait_for(final_done.wait(), 10)
        await asyncio.sleep(0.2)
        engine.stop()
        return got

    got = asyncio.run(main())
    assert got == {"final": "4 4 4"}  # the partial was cut short and never delivered
