"""A finished session's memory goes back at once, by reference counting: none of it waits in a reference
cycle for the garbage collector. (It did: every session, its utterances and their audio waited for the
collector's next full pass, which drove the soak's slow RSS creep.) A real daemon in this process, the tiny
bundle, real websocket sessions over loopback."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import alsa_speech, silence

from tympan.daemon.client import stream
from tympan.daemon.server import Daemon
from tympan.daemon.session import Session
from tympan.daemon.settings import load_daemon_config
from tympan.daemon.utterance import Utterance

SPEECH = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.5), alsa_speech("Rear_Right"),
                         silence(1.2)])


@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.runtime.bundle import default_bundle

    return default_bundle()


def chunks(audio: np.ndarray):
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

    async def gen():
        for i in range(0, len(pcm), 3200):
            yield pcm[i : i + 3200], 16000

    return gen()


def test_a_finished_session_leaves_nothing_for_the_garbage_collector(bundle: Path) -> None:
    async def main() -> tuple[list[list[dict]], list[object]]:
        cfg = load_daemon_config(env={}, overrides={"server": {"host": "127.0.0.1", "port": 0}})
        daemon = Daemon(cfg, bundle)
        await daemon.start()
        url = f"ws://127.0.0.1:{daemon.port}/v1/stream"
        request = {"task": "st", "target_lang": "de"}
        try:
            await stream(url, chunks(SPEECH), request, lambda e: None)  # first use: imports, caches
            gc.collect()
            gc.disable()
            try:
                sessions = [await stream(url, chunks(SPEECH), request, lambda e: None) for _ in range(3)]
                while daemon.connections:  # the last session's end, after its `done`
                    await asyncio.sleep(0.05)
                left = [o for o in gc.get_objects() if issubclass(type(o), Session | Utterance)]
            finally:
                gc.enable()
        finally:
            daemon.request_stop()
            await daemon.shutdown()
        return sessions, left

    sessions, left = asyncio.run(main())
    for events in sessions:  # each session ran for real: two utterances, their finals, done
        assert [e["type"] for e in events].count("final") == 2 and events[-1]["type"] == "done"
    assert left == [], f"{len(left)} objects of finished sessions are kept alive by a reference cycle"
