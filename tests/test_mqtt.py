"""tympan.daemon.mqtt against a real mosquitto (tests/broker.py): topics, ordering, outages, crashes, spool."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Received, Subscriber, free_port

from tympan.config import ConfigError, from_dict
from tympan.daemon.mqtt import STOP_GRACE_S, MqttConfig, Publisher

LOGGER = "tympan.daemon.mqtt"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def first_seen(messages: list[Received]) -> list[str]:
    """message_ids in order of first arrival (delivery is at-least-once: later copies are duplicates)."""
    seen: dict[str, None] = {}
    for m in messages:
        seen.setdefault(m.json()["message_id"], None)
    return list(seen)


def spool_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [json.loads(p)["message_id"] for (p,) in db.execute("SELECT payload FROM finals ORDER BY id")]


def connect_failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum("cannot connect" in r.getMessage() for r in caplog.records if r.name == LOGGER)


# A daemon in another process: starts a Publisher, spools n finals, prints their ids, then waits to be killed.
CHILD = r"""
import asyncio, json, sys
from tympan.daemon.mqtt import MqttConfig, Publisher

async def main() -> None:
    url, spool, site, n, wait_connected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    pub = Publisher(MqttConfig(url=url, spool=spool, site=site))
    await pub.start()
    while wait_connected == "1" and not pub.connected:
        await asyncio.sleep(0.01)
    print(json.dumps([pub.publish_final("s1", {"text": f"final {i}", "i": i}) for i in range(n)]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def run_and_sigkill_child(url: str, spool: Path, site: str, n: int, wait_connected: bool) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, str(spool), site, str(n), "1" if wait_connected else "0",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
    finally:
        proc.kill()  # SIGKILL: no stop(), no clean disconnect, no chance to flush anything
        await proc.wait()
    assert line, "child publisher died before reporting"
    return json.loads(line)


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"url": "http://broker:1883"}, "mqtt.url: expected mqtt://host:port"),
        ({"url": "mqtt://broker:99999"}, "mqtt.url: bad port"),
        ({"url": "mqtt://broker:port"}, "mqtt.url: bad port"),
        ({"url": "mqtt://:1883"}, "mqtt.url: no host"),
        ({"url": "mqtt://user:pw@broker"}, "mqtt.url: put credentials in mqtt.username"),
        ({"site": "a/b"}, "mqtt.site: must be a single MQTT topic level"),
        ({"site": "#"}, "mqtt.site: must be a single MQTT topic level"),
        ({"site": ""}, "mqtt.site: must not be empty"),
        ({"spool_max": 0}, "mqtt.spool_max: must be > 0"),
        ({"keepalive": 0}, "mqtt.keepalive: must be 1-65535"),
        ({"keepalive": "30"}, "mqtt.keepalive: expected an integer"),
        ({"url": "mqtt://broker", "tls_ca": "/ca.pem"}, "mqtt.tls_ca: TLS options need an mqtts:// url"),
        ({"url": "mqtts://broker", "tls_key": "/k.pem"}, "mqtt.tls_key: set mqtt.tls_cert too"),
        ({"password": "pw"}, "mqtt.password: set mqtt.username too"),
        ({"urll": "mqtt://broker"}, "unknown key mqtt.urll"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        from_dict(MqttConfig, data, source="daemon.toml", prefix="mqtt")


def test_config_checked_when_built_directly_too() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.url"):
        MqttConfig(url="ftp://broker")
    cfg = from_dict(MqttConfig, {"url": "mqtts://broker.example", "tls_insecure": True}, source="t", prefix="mqtt")
    assert cfg.enabled and not MqttConfig().enabled


def test_off_unless_configured(tmp_path: Path) -> None:
    async def body() -> None:
        pub = Publisher(MqttConfig(spool=str(tmp_path / "spool.sqlite")))
        await pub.start()
        assert pub.publish_final("s", {"text": "x"})  # accepted and dropped: nobody is configured to get it
        pub.publish_partial("s", {"text": "x"})
        await pub.stop()
        assert not pub.connected and pub.spool_depth == 0

    run(body())
    assert not (tmp_path / "spool.sqlite").exists()


# --- a healthy broker --------------------------------------------------------------------------------


def test_finals_partials_and_status(broker: Broker, tmp_path: Path) -> None:
    async def body() -> None:
        async with Subscriber(broker.port, "tympan/#") as sub:
            pub = Publisher(MqttConfig(url=broker.url, site="lab", partials=True, spool=str(tmp_path / "a.sqlite")))
            await pub.start()
            await wait_until(lambda: pub.connected, what="connect")
            async with Subscriber(broker.port, "tympan/lab/status") as late:  # joins later: gets the retained one
                await late.wait_for(lambda m: len(m) >= 1)
                assert late.messages[0] == Received("tympan/lab/status", b"online", 1, True)

            ids = [pub.publish_final("sess-1", {"text": f"hello {i}", "i": i}) for i in range(5)]
            ids.append(await asyncio.to_thread(pub.publish_final, "sess-1", {"text": "from a thread", "i": 5}))
            pub.publish_partial("sess-1", {"text": "hel"})
            await sub.wait_for(lambda m: len(sub.on("/final")) >= 6 and len(sub.on("/partial")) >= 1)

            finals = sub.on("/final")
            assert {m.topic for m in finals} == {"tympan/lab/session/sess-1/final"}
            assert {m.qos for m in finals} == {1}
            assert [m.json()["message_id"] for m in finals] == ids  # in order, each once
            body0 = finals[0].json()
            assert body0["text"] == "hello 0" and body0["i"] == 0
            assert body0["site"] == "lab" and body0["session_id"] == "sess-1"
            sent_at = datetime.fromisoformat(body0["time"])
            assert sent_at.tzinfo is not None and abs(datetime.now(UTC) - sent_at) < timedelta(seconds=30)
            [partial] = sub.on("/partial")
            assert partial.topic == "tympan/lab/session/sess-1/partial" and partial.qos == 0
            assert partial.json()["text"] == "hel" and partial.json()["session_id"] == "sess-1"

            await wait_until(lambda: pub.spool_depth == 0, what="spool drained")
            assert pub.delivered == 6
            with pytest.raises(ValueError, match="session_id"):
                pub.publish_final("a/b", {})

            await pub.stop()
            assert not pub.connected
            await sub.wait_for(lambda m: m[-1] == Received("tympan/lab/status", b"offline", 1, False))
            async with Subscriber(broker.port, "tympan/lab/status") as late:
                await late.wait_for(lambda m: len(m) >= 1)
                assert late.messages[0] == Received("tympan/lab/status", b"offline", 1, True)

            # Partials off (the default): none published, finals unaffected.
            quiet = Publisher(MqttConfig(url=broker.url, site="quiet", spool=str(tmp_path / "b.sqlite")))
            await quiet.start()
            await wait_until(lambda: quiet.connected, what="connect")
            quiet.publish_partial("s", {"text": "no"})
            quiet.publish_final("s", {"text": "yes"})
            await sub.wait_for(lambda m: any(x.topic == "tympan/quiet/session/s/final" for x in m))
            assert not [m for m in sub.messages if m.topic.startswith("tympan/quiet/session/s/partial")]
            await quiet.stop()

    run(body())


def test_last_will_says_offline_when_the_daemon_dies(broker: Broker, tmp_path: Path) -> None:
    async def body() -> None:
        async with Subscriber(broker.port, "tympan/crash/status") as sub:
            await run_and_sigkill_child(broker.url, tmp_path / "c.sqlite", "crash", 0, wait_connected=True)
            await sub.wait_for(lambda m: [x.payload for x in m] == [b"online", b"offline"])
        async with Subscriber(broker.port, "tympan/crash/status") as late:
            await late.wait_for(lambda m: len(m) >= 1)
            assert late.messages[0] == Received("tympan/crash/status", b"offline", 1, True)

    run(body())


def test_last_will_when_the_event_loop_dies_without_stop(broker: Broker, tmp_path: Path) -> None:
    """A crash inside asyncio.run() cancels the sender: that must not look like a clean disconnect."""

    def crashing_daemon() -> None:
        async def main() -> None:
            pub = Publisher(MqttConfig(url=broker.url, site="oops", spool=str(tmp_path / "o.sqlite")))
            await pub.start()
            await wait_until(lambda: pub.connected, what="connect")
            raise RuntimeError("daemon bug")

        with pytest.raises(RuntimeError, match="daemon bug"):
            asyncio.run(main())

    async def body() -> None:
        async with Subscriber(broker.port, "tympan/oops/status") as sub:
            await asyncio.to_thread(crashing_daemon)
            await sub.wait_for(lambda m: [x.payload for x in m] == [b"online", b"offline"])

    run(body())


# --- outages -----------------------------------------------------------------------------------------


def test_broker_killed_while_publishing_loses_nothing(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def body() -> None:
        # QoS 0 subscription: the subscriber sends no PUBACKs, so a SIGKILLed broker closes its socket with
        # a FIN (not a RST) and everything the broker forwarded before dying still reaches the subscriber.
        async with Subscriber(broker.port, "tympan/k/session/#", qos=0) as sub:
            pub = Publisher(MqttConfig(url=broker.url, site="k", spool=str(tmp_path / "k.sqlite")))
            await pub.start()
            await wait_until(lambda: pub.connected, what="connect")
            ids = []
            for i in range(120):
                if i == 40:
                    await asyncio.to_thread(broker.kill)
                    await wait_until(lambda: not pub.connected, what="loss noticed")
                ids.append(pub.publish_final("s", {"i": i}))
                await asyncio.sleep(0.005)
            # Restart once the publisher has failed twice: its next try is >= 1.6 s away (backoff 0.5, 1, 2 s
            # +-20 %), plenty for the subscriber to be back first (or it would miss messages).
            await wait_until(lambda: connect_failures(caplog) >= 2, what="two failed reconnects")
            await asyncio.to_thread(broker.start)
            await sub.wait_sessions(2)
            assert not pub.connected, "publisher reconnected before the test subscriber; messages would be lost"
            await sub.wait_for(lambda m: len(first_seen(m)) >= 120, timeout=10)
            assert first_seen(sub.messages) == ids  # every final, in order
            await wait_until(lambda: pub.spool_depth == 0, what="spool drained")
            assert pub.delivered >= 120
            await pub.stop()

    run(body())
    lost = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(lost) == 1 and "lost connection" in lost[0].getMessage()  # retries are quiet after the first


def test_finals_wait_for_a_broker_that_is_down_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    broker = Broker(tmp_path / "broker")  # port reserved, not started

    async def body() -> None:
        pub = Publisher(MqttConfig(url=broker.url, site="late", partials=True, spool=str(tmp_path / "d.sqlite")))
        await pub.start()  # returns at once although nothing listens
        ids = [pub.publish_final("s", {"i": i}) for i in range(10)]
        pub.publish_partial("s", {"text": "dropped while disconnected"})
        assert pub.spool_depth == 10 and not pub.connected
        await wait_until(lambda: connect_failures(caplog) >= 2, what="two failed connects")
        await asyncio.to_thread(broker.start)
        async with Subscriber(broker.port, "tympan/late/#") as sub:
            assert not pub.connected, "publisher connected before the test subscriber"
            await sub.wait_for(lambda m: len(sub.on("/final")) >= 10, timeout=8)
            assert first_seen(sub.on("/final")) == ids
            assert not sub.on("/partial")
            await wait_until(lambda: pub.spool_depth == 0, what="spool drained")
            await pub.stop()

    try:
        run(body())
    finally:
        broker.kill()
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot connect" in warnings[0].getMessage()


def test_stop_is_bounded_when_the_broker_hangs(broker: Broker, tmp_path: Path) -> None:
    async def body() -> None:
        pub = Publisher(MqttConfig(url=broker.url, site="hung", spool=str(tmp_path / "h.sqlite")))
        await pub.start()
        await wait_until(lambda: pub.connected, what="connect")
        broker.freeze()
        try:
            for i in range(3):
                pub.publish_final("s", {"i": i})
            started = asyncio.get_running_loop().time()
            await pub.stop(timeout=0.5)
            took = asyncio.get_running_loop().time() - started
        finally:
            broker.thaw()
        assert 0.5 <= took < 0.5 + STOP_GRACE_S, took
        assert pub.spool_depth == 3 and pub.delivered == 0  # unacknowledged: kept for the next start

    run(body())


def test_spool_survives_sigkill_of_the_daemon(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")  # down while the first daemon runs
    spool = tmp_path / "crash.sqlite"

    async def body() -> None:
        ids = await run_and_sigkill_child(broker.url, spool, "phoenix", 20, wait_connected=False)
        assert spool_rows(spool) == ids  # durable, in order, before publish_final returned
        await asyncio.to_thread(broker.start)
        async with Subscriber(broker.port, "tympan/phoenix/session/#") as sub:
            pub = Publisher(MqttConfig(url=broker.url, site="phoenix", spool=str(spool)))
            await pub.start()
            assert pub.spool_depth == 20
            await sub.wait_for(lambda m: len(m) >= 20)
            assert first_seen(sub.messages) == ids
            await wait_until(lambda: pub.spool_depth == 0, what="spool drained")
            await pub.stop()
        assert spool_rows(spool) == []

    try:
        run(body())
    finally:
        broker.kill()


def test_full_spool_drops_the_oldest_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = tmp_path / "full.sqlite"

    async def body() -> None:
        pub = Publisher(MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}", spool=str(spool), spool_max=5))
        await pub.start()
        ids = [pub.publish_final("s", {"i": i}) for i in range(12)]  # returns at once: never blocks
        assert pub.spool_depth == 5
        await asyncio.sleep(0.05)  # the warning is logged from the loop, once per burst
        await pub.stop(timeout=0.1)
        assert spool_rows(spool) == ids[-5:]
        assert pub.dropped == 7

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run(body())
    full = [r.getMessage() for r in caplog.records if "spool full" in r.getMessage()]
    assert len(full) == 1, full
    assert "mqtt.spool_max = 5" in full[0] and "dropped the 7 oldest" in full[0]


def test_one_process_per_spool(tmp_path: Path) -> None:
    async def body() -> None:
        cfg = MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}", spool=str(tmp_path / "one.sqlite"))
        first, second = Publisher(cfg), Publisher(cfg)
        await first.start()
        with pytest.raises(RuntimeError, match="in use by another process"):
            await second.start()
        await first.stop(timeout=0)

    run(body())


# --- credentials and TLS -----------------------------------------------------------------------------


def _make_certs(d: Path) -> None:
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=tympan test CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None,
                    reason="needs openssl and mosquitto_passwd")
def test_tls_and_password(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    _make_certs(certs)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "tympan", "s3cret"], check=True, capture_output=True)
    tls_port = free_port()
    extra = (f"password_file {passwd}\nlistener {tls_port} 127.0.0.1\n"
             f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n")
    creds = {"username": "tympan", "password": "s3cret"}

    async def body(broker: Broker) -> None:
        async with Subscriber(broker.port, "tympan/sec/#", **creds) as sub:
            url, ca = f"mqtts://127.0.0.1:{tls_port}", str(certs / "ca.crt")
            good = [
                MqttConfig(url=url, site="sec", tls_ca=ca, spool=str(tmp_path / "1.sqlite"), **creds),
                MqttConfig(url=url, site="sec", tls_insecure=True, spool=str(tmp_path / "2.sqlite"), **creds),
            ]
            for n, cfg in enumerate(good):
                pub = Publisher(cfg)
                await pub.start()
                pub.publish_final("s", {"n": n})
                await sub.wait_for(lambda m, n=n: any(x.topic.endswith("/final") and x.json()["n"] == n for x in m))
                await pub.stop()
            # Refused (wrong password; CA not trusted): no crash, the final waits in the spool.
            bad = [
                MqttConfig(url=url, site="sec", tls_ca=ca, username="tympan", password="nope",
                           spool=str(tmp_path / "3.sqlite")),
                MqttConfig(url=url, site="sec", spool=str(tmp_path / "4.sqlite"), **creds),
            ]
            for cfg in bad:
                pub = Publisher(cfg)
                await pub.start()
                pub.publish_final("s", {"n": -1})
                await asyncio.sleep(0.3)
                assert not pub.connected and pub.spool_depth == 1
                await pub.stop(timeout=0)
                assert pub.spool_depth == 1

    with Broker(tmp_path / "broker", extra_config=extra, allow_anonymous=False) as broker:
        run(body(broker))
