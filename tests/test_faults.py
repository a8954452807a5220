"""Faults and hostile clients, against real `tympan serve` processes and a real mosquitto.

- The broker SIGKILLed for 30 s while three sessions stream: every final reaches a subscriber, in order
  per session, and after deduplication by `message_id` exactly once. In the same outage a second daemon
  hits its spool's bound (oldest finals dropped, a log line saying so) and a third is SIGKILLed with finals
  in its spool, restarted, and publishes them.
- Slow readers (clients that send and never read): dropped with a close reason, the daemon's memory stays
  bounded, a well-behaved session beside them gets its finals.
- Floods past `limits.max_sessions` and past the connection bound: refused (`overloaded`, 1013, or HTTP
  503), live sessions unaffected, no slot leaked.
- Clients vanishing mid-utterance: their finals are still published, nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, Received, Subscriber
from daemon_harness import DaemonProcess, alsa_speech, silence
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

RATE = 16000
RECORDINGS = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left",
              "Side_Right"]
SPEECH = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.5), alsa_speech("Rear_Right"),
                         silence(1.2)])
ST_DE = {"task": "st", "target_lang": "de"}
STOP = json.dumps({"type": "stop"})
OUTAGE_S = 30.0
WATCHER = {"username": "watcher", "password": "w4tcher"}  # the test's subscriber, let in before the daemons

@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.daemon.cli import default_bundle

    return default_bundle()


# --- clients -----------------------------------------------------------------------------------------------


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def utterance(name: str, pause_s: float = 1.0) -> np.ndarray:
    return np.concatenate([alsa_speech(name), silence(pause_s)])


def start_message(session_id: str | None = None) -> str:
    return json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", **ST_DE,
                       **({"session_id": session_id} if session_id else {})})


async def send_audio(ws, audio: np.ndarray, realtime: bool = False, chunk_ms: int = 100, speed: float = 1.0) -> None:
    """Send `audio` as PCM16 frames; with `realtime`, at the pace of a live microphone (times `speed`)."""
    data, step = pcm16(audio), RATE * chunk_ms // 1000 * 2
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n, i in enumerate(range(0, len(data), step)):
        if realtime:
            await asyncio.sleep(max(0.0, t0 + n * chunk_ms / 1000 / speed - loop.time()))
        await ws.send(data[i : i + step])


async def collect(ws, events: list[dict]) -> None:
    """Every event until `done` or the close."""
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            events.append(json.loads(message))
            if events[-1]["type"] == "done":
                return


async def session(url: str, audio: np.ndarray, session_id: str | None = None, realtime: bool = False,
                  speed: float = 1.0, linger: asyncio.Event | None = None) -> list[dict]:
    """A well-behaved client: start, the audio, (wait for `linger`,) stop; every event it got, up to `done`."""
    events: list[dict] = []
    async with connect(url) as ws:
        await ws.send(start_message(session_id))
        receiver = asyncio.create_task(collect(ws, events))
        await send_audio(ws, audio, realtime, speed=speed)
        if linger is not None:
            await asyncio.wait_for(linger.wait(), 120)
        await ws.send(STOP)
        await asyncio.wait_for(receiver, 120)
    assert events and events[0]["type"] == "ready" and events[-1]["type"] == "done", events[-3:]
    return events


def finals(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "final"]


def texts(events: list[dict]) -> list[str]:
    return [f["text"] for f in finals(events)]


# --- MQTT side ---------------------------------------------------------------------------------------------


def published(messages: list[Received], site: str, session_id: str) -> tuple[list[dict], int]:
    """A session's finals as a subscriber sees them: deduplicated by message_id (first arrival kept, so in
    order of first arrival), and how many copies arrived in all."""
    topic = f"tympan/{site}/session/{session_id}/final"
    unique: dict[str, dict] = {}
    copies = 0
    for m in messages:
        if m.topic == topic:
            copies += 1
            unique.setdefault(m.json()["message_id"], m.json())
    return list(unique.values()), copies


def as_sent(payload: dict) -> dict:
    """The final event inside an MQTT payload (without the keys the publisher adds)."""
    return {k: v for k, v in payload.items() if k not in ("site", "session_id", "message_id", "time")}


def spool_rows(path: Path) -> list[dict]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [json.loads(p) for (p,) in db.execute("SELECT payload FROM finals ORDER BY id")]


def password_file(path: Path) -> Path:
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), WATCHER["username"], WATCHER["password"]],
                   check=True, capture_output=True)
    return path


def mqtt_config(broker: Broker, site: str, work: Path, extra: str = "") -> str:
    return (f'[mqtt]\nurl = "{broker.url}"\nsite = "{site}"\nspool = "{work / "spool.sqlite"}"\n{extra}'
            "[limits]\nmax_frame_bytes = 65536\n")


def start_all(*daemons: DaemonProcess) -> None:
    """Start daemons side by side (each loads its model for a second or two)."""
    with ThreadPoolExecutor(len(daemons)) as pool:
        for f in [pool.submit(d.start) for d in daemons]:
            f.result()


# --- the broker killed for 30 s ------------------------------------------------------------------------------


async def stream_until(url: str, session_id: str, names: list[str], reconnected: asyncio.Event) -> list[dict]:
    """Stream utterances at the pace of speech until the daemon is back on the broker, then one more, then stop."""
    events: list[dict] = []
    async with connect(url) as ws:
        await ws.send(start_message(session_id))
        receiver = asyncio.create_task(collect(ws, events))
        n = 0
        while True:
            last = reconnected.is_set()
            await send_audio(ws, utterance(names[n % len(names)]), realtime=True)
            n += 1
            if last:
                break
        await ws.send(STOP)
        await asyncio.wait_for(receiver, 60)
    assert events[-1]["type"] == "done", events[-3:]
    return events


async def watch_spool(daemon: DaemonProcess, depths: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        depths.append((await asyncio.to_thread(daemon.health))["mqtt"]["spool_depth"])
        await asyncio.sleep(0.05)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_broker_sigkilled_for_30_s_while_sessions_stream(bundle, tmp_path) -> None:
    broker = Broker(tmp_path / "broker", extra_config=f"password_file {password_file(tmp_path / 'passwd')}\n")
    broker.start()
    streaming = DaemonProcess(bundle, tmp_path / "a", mqtt_config(broker, "a", tmp_path / "a"))
    bounded = DaemonProcess(bundle, tmp_path / "b", mqtt_config(broker, "b", tmp_path / "b", "spool_max = 3\n"))
    crashing = DaemonProcess(bundle, tmp_path / "c", mqtt_config(broker, "c", tmp_path / "c"))
    daemons = (streaming, bounded, crashing)
    ids = ["a0", "a1", "a2"]

    async def main() -> dict:
        out: dict = {}
        loop = asyncio.get_running_loop()
        async with Subscriber(broker.port, "tympan/+/session/+/final", **WATCHER) as sub:
            reconnected = asyncio.Event()
            names = [RECORDINGS[i::3] for i in range(3)]
            sessions = [asyncio.create_task(stream_until(streaming.url, sid, names[i], reconnected))
                        for i, sid in enumerate(ids)]
            # Before the kill, finals are delivered live.
            await sub.wait_for(lambda m: all(any(f"/session/{s}/" in x.topic for x in m) for s in ids), 60)
            await asyncio.to_thread(broker.kill)
            out["killed"] = datetime.now(UTC)
            back_at = loop.time() + OUTAGE_S

            # Meanwhile, a daemon whose spool holds 3 finals gets 6.
            depths: list[int] = []
            watching = asyncio.Event()
            watcher = asyncio.create_task(watch_spool(bounded, depths, watching))
            out["b1"] = await session(bounded.url, np.concatenate([SPEECH] * 3), "b1")
            watching.set()
            await watcher
            out["b_depths"] = [*depths, bounded.health()["mqtt"]["spool_depth"]]
            await asyncio.to_thread(  # said at once (later drops are summed up at most once a minute)
                bounded.wait_log, r"mqtt: spool full \(mqtt\.spool_max = 3\): dropped the \d+ oldest undelivered")

            # And another is SIGKILLed with two finals in its spool, restarted, and spools two more.
            out["c1"] = await session(crashing.url, SPEECH, "c1")
            await asyncio.to_thread(crashing.wait_metrics, lambda m: m["tympan_spool_depth"] == 2)
            out["c_spooled"] = spool_rows(crashing.workdir / "spool.sqlite")
            assert crashing.stop(signal.SIGKILL) == -signal.SIGKILL
            out["c_after_kill"] = spool_rows(crashing.workdir / "spool.sqlite")
            await asyncio.to_thread(crashing.start)
            out["c_depth_at_restart"] = crashing.health()["mqtt"]["spool_depth"]
            out["c2"] = await session(crashing.url, SPEECH, "c2")

            await asyncio.sleep(max(0.0, back_at - loop.time()))
            # Back: our subscriber first (the daemons are kept out until it has subscribed again: the broker
            # keeps nothing, so whatever they sent before would be lost to it), then everyone.
            out["depth_a_before_restart"] = streaming.health()["mqtt"]["spool_depth"]
            broker.allow_anonymous(False)
            await asyncio.to_thread(broker.start)
            out["restarted"] = datetime.now(UTC)
            await sub.wait_sessions(2, timeout=30)
            assert not any(d.health()["mqtt"]["connected"] for d in daemons)
            broker.allow_anonymous(True)
            deadline = loop.time() + 60  # the daemons retry with a backoff of up to 10 s
            while not all(d.health()["mqtt"]["connected"] for d in daemons):
                assert loop.time() < deadline, "the daemons did not reconnect"
                await asyncio.sleep(0.1)
            reconnected.set()
            out["a"] = await asyncio.gather(*sessions)

            def all_there(messages: list[Received]) -> bool:
                want = {**{("a", s): len(finals(e)) for s, e in zip(ids, out["a"], strict=True)},
                        ("b", "b1"): 3, ("c", "c1"): 2, ("c", "c2"): 2}
                return all(len(published(messages, site, s)[0]) >= n for (site, s), n in want.items())

            await sub.wait_for(all_there, 60)
            for d in daemons:
                await asyncio.to_thread(d.wait_metrics, lambda m: m["tympan_spool_depth"] == 0)
            await asyncio.sleep(0.5)  # anything extra (a duplicate, a final that should have been dropped) shows
            out["messages"] = list(sub.messages)
        return out

    try:
        start_all(*daemons)
        out = asyncio.run(main())
        bounded.stop()  # a clean stop reports the drops not yet reported (one line per minute at most)
    finally:
        for d in daemons:
            d.stop(signal.SIGKILL)
        broker.kill()
    messages = out["messages"]

    # Three sessions: every final, in order, once after deduplication; some spooled during the outage.
    spooled_in_outage = 0
    for sid, events in zip(ids, out["a"], strict=True):
        got = finals(events)
        unique, copies = published(messages, "a", sid)
        assert [as_sent(p) for p in unique] == got, sid
        assert len({p["segment_id"] for p in unique}) == len(unique) == len(got) and copies >= len(got)
        when = [datetime.fromisoformat(p["time"]) for p in unique]
        assert when[0] < out["killed"] < when[-1], sid  # before, during and after the outage
        spooled_in_outage += sum(out["killed"] < t < out["restarted"] for t in when)
        assert len(got) >= 12 and any(f["text"] for f in got)
    assert spooled_in_outage >= 3 * 8 and out["depth_a_before_restart"] >= 3 * 8

    # The bounded spool: never more than 3 rows; the 3 newest finals delivered, the 3 oldest dropped, said so.
    b_finals = finals(out["b1"])
    assert len(b_finals) == 6 and max(out["b_depths"]) == 3 and out["b_depths"][-1] == 3
    unique, _ = published(messages, "b", "b1")
    assert [as_sent(p) for p in unique] == b_finals[-3:]
    dropped = [int(n) for n in re.findall(r"spool full \(mqtt\.spool_max = 3\): dropped the (\d+) oldest",
                                          bounded.log())]
    assert sum(dropped) == 3, bounded.log()[-3000:]

    # The SIGKILLed daemon: its spool kept both finals through the kill and published them after the restart,
    # before those of the session after the restart.
    c1, c2 = finals(out["c1"]), finals(out["c2"])
    assert [as_sent(p) for p in out["c_spooled"]] == c1 and out["c_after_kill"] == out["c_spooled"]
    assert out["c_depth_at_restart"] == 2 and "mqtt: 2 final(s) left in spool" in crashing.log()
    unique, _ = published(messages, "c", "c1")
    assert [p["message_id"] for p in unique] == [p["message_id"] for p in out["c_spooled"]]
    unique2, _ = published(messages, "c", "c2")
    assert [as_sent(p) for p in unique2] == c2
    c_order = [m.json()["message_id"] for m in messages if m.topic.startswith("tympan/c/")]
    assert c_order.index(unique[-1]["message_id"]) < c_order.index(unique2[0]["message_id"])

    for d in daemons:
        assert not d.tracebacks(), d.tracebacks()[0]
    assert "mqtt: lost connection to" in streaming.log()


# --- slow readers --------------------------------------------------------------------------------------------


async def not_reading(daemon: DaemonProcess, path: str = "stream"):
    """A websocket client that reads nothing: a small receive buffer, no keepalive pings of its own, and no
    compression (which would let the socket buffers hold thousands of repetitive events)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", daemon.port))
    return await connect(daemon.url if path == "stream" else daemon.vosk_url, sock=sock, max_queue=1,
                         ping_interval=None, compression=None)


async def slow_reader(daemon: DaemonProcess, session_id: str, flood: list[str | bytes],
                      limit_s: float = 60.0) -> tuple[int, int, str]:
    """Start a session, then send `flood` over and over, never reading, until the daemon logs that it drops
    this client; then read what had been queued for it. Returns (bytes read, close code, close reason)."""
    ws = await not_reading(daemon)
    pattern = f"session {session_id}: client is not reading; disconnecting"
    loop = asyncio.get_running_loop()
    checked = loop.time()
    deadline = checked + limit_s
    with contextlib.suppress(ConnectionClosed):
        await ws.send(start_message(session_id))
        while True:
            if loop.time() > checked + 0.05:
                checked = loop.time()
                if pattern in daemon.log():
                    break
                assert checked < deadline, f"{session_id} was never dropped"
            for message in flood:
                await ws.send(message)
    received = 0
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            received += len(message)
    await ws.wait_closed()
    return received, ws.close_code or 0, ws.close_reason or ""


async def amplifier(daemon: DaemonProcess, session_id: str, frames: int, message: str) -> None:
    """Never reads, and sends requests whose error events would quote them: `frames` of them, then gone."""
    ws = await not_reading(daemon)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(start_message(session_id))
        for _ in range(frames):
            await ws.send(message)
    ws.transport.abort()


async def tiny_frames(daemon: DaemonProcess, until: asyncio.Future) -> None:
    """A Vosk client that sends 2-byte frames as fast as it can and never reads its answers."""
    ws = await not_reading(daemon, "vosk")
    with contextlib.suppress(ConnectionClosed):
        while not until.done():
            for _ in range(20):
                await ws.send(b"\x00\x00")
            await asyncio.sleep(0.01)
    ws.transport.abort()


def test_slow_readers_are_dropped_and_memory_stays_bounded(bundle, tmp_path) -> None:
    # Frames of up to 256 KiB, so that a client can try to make each event it causes that large.
    daemon = DaemonProcess(bundle, tmp_path / "slow", "[limits]\nmax_frame_bytes = 262144\n").start()
    pcm = pcm16(SPEECH)
    audio = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    # An error event each, the session goes on; each quotes up to 300 characters of 4 bytes each back.
    long_task = json.dumps({"type": "config", "task": "\U0001f600" * 300}, ensure_ascii=False)
    huge_type = json.dumps({"type": "x" * 250_000})

    async def main() -> tuple[list[dict], list[dict], list[tuple[int, int, str]], float, float]:
        reference = await session(daemon.url, SPEECH)
        await asyncio.sleep(0.5)
        baseline = peak = daemon.rss_mb()
        good = asyncio.create_task(session(daemon.url, np.concatenate([SPEECH, SPEECH]), realtime=True, speed=2))
        finished = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not finished.is_set():
                peak = max(peak, daemon.rss_mb())
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        vosk = asyncio.create_task(tiny_frames(daemon, good))
        slow = await asyncio.gather(
            slow_reader(daemon, "slow-1", [audio[7], *[long_task] * 20]),
            slow_reader(daemon, "slow-2", [audio[9], audio[10], *[long_task] * 20]),
            *(amplifier(daemon, f"amplifier-{i}", 400, huge_type) for i in range(3)),
        )
        events = await good
        finished.set()
        await asyncio.gather(sampler, vosk)
        return reference, events, slow[:2], baseline, peak

    try:
        reference, good, slow, baseline, peak = asyncio.run(main())
        daemon.wait_metrics(lambda m: m["tympan_sessions_active"] == 0)
        health = daemon.health()
    finally:
        daemon.stop()
    assert len(finals(reference)) == 2 and texts(good) == texts(reference) * 2
    for received, code, reason in slow:
        # Dropped, with the reason; what waited for it was bounded (limits.send_queue events, socket buffers).
        assert (code, reason) == (1008, "client does not read its events"), (code, reason)
        assert received < 8_000_000, received
    # 3 x 400 requests of 250 kB: had their error events quoted them whole, 256 of those would have waited for
    # each amplifier (before daemon/session.py cut error messages short: +215 MiB).
    assert peak - baseline < 60, f"the daemon grew from {baseline:.0f} to {peak:.0f} MiB for its slow readers"
    assert health["ready"] and not daemon.tracebacks()


# --- floods --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(bundle: Path, broker: Broker, tmp_path_factory: pytest.TempPathFactory):
    """A daemon for floods and vanishing clients: 8 sessions at most, 3 s to send `start`."""
    work = tmp_path_factory.mktemp("hostile")
    config = mqtt_config(broker, "h", work) + "max_sessions = 8\nstart_timeout_s = 3\n"
    with DaemonProcess(bundle, work, config) as d:
        d.reference = texts(asyncio.run(session(d.url, SPEECH)))  # type: ignore[attr-defined]
        assert len(d.reference) == 2 and any(d.reference)  # type: ignore[attr-defined]
        yield d


async def flood_client(daemon: DaemonProcess, path: str, hold: asyncio.Event) -> str:
    """Try to start a session and hold it until `hold` is set. Returns what happened: "admitted",
    "overloaded" (error event and close 1013, or for Vosk the close alone) or "http 503"."""
    url = daemon.url if path == "stream" else daemon.vosk_url
    try:
        ws = await connect(url, open_timeout=30)
    except InvalidStatus as e:
        return f"http {e.response.status_code}"
    async with ws:
        try:
            if path == "stream":
                await ws.send(start_message())
                first = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if first["type"] == "ready":
                    await hold.wait()
                    await ws.send(STOP)
                    await ws.wait_closed()
                    return "admitted"
                assert (first["type"], first["code"]) == ("error", "overloaded"), first
            else:
                await ws.send(pcm16(silence(0.1)))
                first = json.loads(await asyncio.wait_for(ws.recv(), 30))  # an answer: admitted
                assert first == {"partial": ""}, first
                await hold.wait()
                await ws.send('{"eof" : 1}')
                await ws.wait_closed()
                return "admitted"
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        assert ws.close_code == 1013 and ws.close_reason.startswith("overloaded"), (ws.close_code, ws.close_reason)
        return "overloaded"


async def idle_client(daemon: DaemonProcess) -> str:
    """Connect and send nothing: closed after limits.start_timeout_s, or refused at the handshake."""
    try:
        ws = await connect(daemon.url, open_timeout=30)
    except InvalidStatus as e:
        return f"http {e.response.status_code}"
    await asyncio.wait_for(ws.wait_closed(), 30)
    return f"{ws.close_code} {ws.close_reason}"


def test_floods_past_max_sessions_are_refused_and_live_sessions_go_on(hostile) -> None:
    daemon = hostile

    async def main() -> tuple[list[list[dict]], list[str], list[str], list[dict]]:
        flooded = asyncio.Event()  # the live sessions stay until the floods are over
        live = [asyncio.create_task(session(daemon.url, SPEECH, realtime=True, linger=flooded)) for _ in range(2)]
        await asyncio.to_thread(daemon.wait_metrics, lambda m: m["tympan_sessions_active"] == 2)
        # 3 x max_sessions at once, on both paths: 6 slots are left, the rest is refused.
        hold = asyncio.Event()
        flood = [asyncio.create_task(flood_client(daemon, "stream" if i % 3 else "vosk", hold)) for i in range(24)]
        await asyncio.to_thread(daemon.wait_metrics, lambda m: m["tympan_sessions_active"] == 8)
        deadline = asyncio.get_running_loop().time() + 60
        while sum(not t.done() for t in flood) > 6:
            assert asyncio.get_running_loop().time() < deadline, "refused flood clients were not answered"
            await asyncio.sleep(0.05)
        hold.set()
        outcomes = await asyncio.gather(*flood)
        # Connections that never send `start`: bounded too (2 x max_sessions + 4 open connections).
        idle = await asyncio.gather(*(idle_client(daemon) for _ in range(40)))
        flooded.set()
        events = await asyncio.gather(*live)
        after = await session(daemon.url, SPEECH)  # no slot was leaked
        return events, outcomes, idle, after

    events, outcomes, idle, after = asyncio.run(main())
    assert outcomes.count("admitted") == 6, outcomes
    assert outcomes.count("overloaded") >= 10 and set(outcomes) <= {"admitted", "overloaded", "http 503"}, outcomes
    assert set(idle) == {"1008 idle for 3 s", "http 503"} and idle.count("1008 idle for 3 s") <= 2 * 8 + 4, idle
    for e in events:
        assert texts(e) == daemon.reference
    assert texts(after) == daemon.reference
    daemon.wait_metrics(lambda m: m["tympan_sessions_active"] == 0)
    assert daemon.health()["ready"] and not daemon.tracebacks()


# --- clients that vanish -------------------------------------------------------------------------------------


async def vanishing_stream(daemon: DaemonProcess, session_id: str, name: str) -> list[dict]:
    """One utterance to its final, then half of another, then gone: no close handshake, the socket dropped."""
    events: list[dict] = []
    ws = await connect(daemon.url)
    await ws.send(start_message(session_id))
    receiver = asyncio.create_task(collect(ws, events))
    await send_audio(ws, np.concatenate([silence(0.3), utterance(name)]))

    async def first_final() -> None:
        while not finals(events):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(first_final(), 60)
    second = alsa_speech(name)
    await send_audio(ws, np.concatenate([silence(0.3), second[: len(second) * 3 // 4]]))
    await asyncio.sleep(0.2)
    ws.transport.abort()
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiver
    return events


async def vanishing_vosk(daemon: DaemonProcess, name: str) -> list[dict]:
    answers = []
    ws = await connect(daemon.vosk_url)
    await ws.send(json.dumps({"config": {"sample_rate": RATE}}))
    data = pcm16(np.concatenate([silence(0.3), utterance(name), silence(0.3), alsa_speech(name)[:9000]]))
    for i in range(0, len(data), 3200):
        await ws.send(data[i : i + 3200])
        answers.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    ws.transport.abort()
    return answers


async def vanishing_early(daemon: DaemonProcess, when: str) -> None:
    """Gone during the HTTP handshake, right after it, or right after `start`."""
    if when == "handshake":
        _reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        await writer.drain()
        writer.transport.abort()
        return
    ws = await connect(daemon.url)
    if when == "start":
        await ws.send(start_message())
        await asyncio.wait_for(ws.recv(), 30)
    ws.transport.abort()


def test_clients_vanishing_mid_utterance_leave_nothing_behind_and_their_finals_are_published(hostile, broker) -> None:
    daemon = hostile
    ids = [f"gone-{i}" for i in range(6)]

    async def main() -> tuple[list[list[dict]], list[list[dict]], list[Received]]:
        async with Subscriber(broker.port, "tympan/h/session/+/final") as sub:
            before = len(sub.messages)
            results = await asyncio.gather(
                *(vanishing_stream(daemon, sid, RECORDINGS[i]) for i, sid in enumerate(ids)),
                *(vanishing_vosk(daemon, name) for name in ("Side_Left", "Rear_Left")),
                *(vanishing_early(daemon, when) for when in ("handshake", "connected", "start") * 2))
            # Each vanished client's two finals (the one it got, and the one of the utterance it left) published.
            await sub.wait_for(lambda m: len({x.json()["message_id"] for x in m[before:]}) >= 2 * 6 + 2 * 2, 30)
            await asyncio.sleep(0.5)
            return list(results[:6]), list(results[6:8]), sub.messages[before:]

    streams, voskes, messages = asyncio.run(main())
    for sid, events in zip(ids, streams, strict=True):
        unique, _ = published(messages, "h", sid)
        got = finals(events)
        assert len(got) == 1 and len(unique) == 2, (sid, got, unique)
        assert as_sent(unique[0]) == got[0]
        assert unique[1]["segment_id"] > got[0]["segment_id"] and unique[1]["start"] >= got[0]["end"]
    for answers in voskes:
        assert len([a for a in answers if "text" in a]) == 1, answers  # the first utterance, answered
    vosk_ids = {m.json()["session_id"] for m in messages if m.json()["session_id"].startswith("vosk-")}
    assert len(vosk_ids) == 2 and all(len(published(messages, "h", v)[0]) == 2 for v in vosk_ids), vosk_ids
    m = daemon.wait_metrics(lambda m: m["tympan_sessions_active"] == 0 and m["tympan_sessions_lingering"] == 0)
    assert m["tympan_queue_depth"] == 0
    assert texts(asyncio.run(session(daemon.url, SPEECH))) == daemon.reference
    assert daemon.health()["ready"] and not daemon.tracebacks()
