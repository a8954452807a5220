"""Who may connect, and how: the bearer token and the Origin check refuse the websocket handshake (HTTP
401/403, before any session exists) on both streaming paths; TLS with a self-signed certificate made here
with the openssl CLI (the daemon, its health page, tympan's own client and a Vosk client over it); the
systemd unit's sandbox as systemd-analyze scores it. All against a real `tympan serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, alsa_speech, offline_finals, silence, write_wav
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-t0ken"
ORIGIN = "https://app.example"
SPEECH = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.5), alsa_speech("Rear_Right"),
                         silence(1.2)])
START = json.dumps({"type": "start", "task": "asr", "sample_rate": 16000})
EOF = '{"eof" : 1}'

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.daemon.cli import default_bundle

    return default_bundle()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (EC P-256, valid two days)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], cwd=d, check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def trust(certs: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts exactly the test certificate (and verifies the host name)."""
    return ssl.create_default_context(cafile=str(certs[0]))


@pytest.fixture(scope="module")
def daemon(bundle: Path, certs: tuple[Path, Path], trust: ssl.SSLContext, tmp_path_factory: pytest.TempPathFactory):
    cert, key = certs
    config = (f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
              f'[auth]\ntoken = "{TOKEN}"\nallowed_origins = ["{ORIGIN}"]\n'
              "[limits]\nmax_frame_bytes = 65536\n")
    with DaemonProcess(bundle, tmp_path_factory.mktemp("secure"), config, tls=trust) as d:
        yield d


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(url: str, trust: ssl.SSLContext, **kwargs) -> int:
    """The HTTP status of a refused handshake (AssertionError if the handshake succeeds)."""
    try:
        ws = await connect(url, ssl=trust, **kwargs)
    except InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    raise AssertionError(f"handshake to {url} with {kwargs} was accepted")


async def accepted(url: str, trust: ssl.SSLContext, **kwargs) -> dict:
    """Connect and do the smallest exchange of the path's protocol; returns the first answer."""
    async with connect(url, ssl=trust, **kwargs) as ws:
        if url.split("?")[0].endswith("/vosk"):
            await ws.send(EOF)
        else:
            await ws.send(START)
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.close()
    return answer


def is_welcome(answer: dict) -> bool:
    return answer.get("type") == "ready" or answer == {"text": ""}


# --- TLS -----------------------------------------------------------------------------------------------


@needs_openssl
def test_tls_with_a_self_signed_certificate(daemon, bundle, certs, trust, tmp_path) -> None:
    """wss:// and https:// work for a client that trusts the certificate: tympan's own `stream` command (trust
    given the usual way, SSL_CERT_FILE) gets the same finals as an offline run, a Vosk client its answers;
    plain ws:// and http:// get nothing and a client that does not trust the certificate is refused."""
    assert daemon.url.startswith("wss://") and daemon.health()["ready"]  # health over https
    wav = write_wav(tmp_path / "speech.wav", SPEECH)
    out = subprocess.run([sys.executable, "-m", "tympan", "stream", str(wav), "--url", daemon.url,
                          "--token", TOKEN, "--task", "st", "--lang", "de"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "SSL_CERT_FILE": str(certs[0])})
    assert out.returncode == 0, out.stderr
    printed = [line.split("] ", 1)[1] if "] " in line else "" for line in out.stdout.strip().splitlines()]
    expected = offline_finals(bundle, SPEECH)
    assert len(expected) == 2 and any(expected)
    assert printed == expected

    pcm = (SPEECH * 32767).astype("<i2").tobytes()
    frames = [pcm[i : i + 6400] for i in range(0, len(pcm), 6400)]

    async def vosk() -> tuple[list[dict], int]:
        answers = []
        async with connect(f"{daemon.vosk_url}?token={TOKEN}", ssl=trust) as ws:
            await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
            for f in frames:
                await ws.send(f)
                answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(EOF)
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.wait_closed()
            return answers, ws.close_code or 0

    answers, code = asyncio.run(vosk())
    assert len(answers) == len(frames) + 1 and code == 1000
    assert len([a for a in answers[:-1] if "text" in a]) == 2  # both utterances, over TLS

    async def plain_and_untrusting() -> list[BaseException]:
        failures = []
        for attempt in (connect(daemon.url.replace("wss://", "ws://"), additional_headers=bearer(TOKEN),
                                open_timeout=10),
                        connect(daemon.url, additional_headers=bearer(TOKEN), ssl=ssl.create_default_context(),
                                open_timeout=10)):
            try:
                ws = await attempt
                await ws.close()
            except Exception as e:  # what kind depends on where the handshake breaks
                failures.append(e)
        return failures

    failures = asyncio.run(plain_and_untrusting())
    assert len(failures) == 2, failures
    assert isinstance(failures[1], ssl.SSLCertVerificationError), failures[1]
    with pytest.raises(OSError):
        urllib.request.urlopen(daemon.http.replace("https://", "http://") + "/healthz", timeout=5)
    assert daemon.health()["ready"] and not daemon.tracebacks()


# --- the token and the Origin --------------------------------------------------------------------------


@needs_openssl
def test_the_token_is_checked_at_the_handshake_on_both_paths(daemon, trust) -> None:
    async def main() -> tuple[dict[str, list[int]], dict[str, list[dict]]]:
        statuses: dict[str, list[int]] = {}
        answers: dict[str, list[dict]] = {}
        for url in (daemon.url, daemon.vosk_url):
            statuses[url] = [
                await refused(url, trust),  # no token at all
                await refused(url, trust, additional_headers=bearer("wrong")),
                await refused(url, trust, additional_headers=bearer(TOKEN[:-1])),  # a prefix of it
                await refused(url, trust, additional_headers=bearer(TOKEN + "x")),
                await refused(url, trust, additional_headers=bearer("")),
                await refused(f"{url}?token=wrong", trust),
                await refused(f"{url}?token=", trust),
                await refused(url, trust, additional_headers={"Authorization": TOKEN}),  # no scheme
                await refused(url, trust, additional_headers=[("Authorization", f"Bearer {TOKEN}"),
                                                              ("Authorization", f"Bearer {TOKEN}")]),
            ]
            answers[url] = [await accepted(url, trust, additional_headers=bearer(TOKEN)),
                            await accepted(f"{url}?token={TOKEN}", trust)]
        return statuses, answers

    before = daemon.metrics()["tympan_sessions_total"]
    statuses, answers = asyncio.run(main())
    for url, got in statuses.items():
        assert got == [401] * 8 + [400], (url, got)
        assert all(is_welcome(a) for a in answers[url]), answers[url]
    # Refused handshakes never became sessions: only the four accepted connections count.
    assert daemon.metrics()["tympan_sessions_total"] - before == 4
    assert daemon.health()["ready"]


@needs_openssl
def test_browsers_from_other_origins_are_refused(daemon, trust) -> None:
    own_page = f"https://127.0.0.1:{daemon.port}"  # the daemon's own page is always allowed

    async def main() -> tuple[list[int], list[dict]]:
        statuses, answers = [], []
        for url in (daemon.url, daemon.vosk_url):
            for origin in ("https://evil.example", "http://app.example", "https://app.example.evil.example",
                           "https://app.example:8443", "null", f"https://127.0.0.1:{daemon.port + 1}"):
                statuses.append(await refused(url, trust, additional_headers=bearer(TOKEN), origin=origin))
            statuses.append(await refused(url, trust, additional_headers=[
                ("Authorization", f"Bearer {TOKEN}"), ("Origin", ORIGIN), ("Origin", "https://evil.example")]))
            for origin in (ORIGIN, own_page, None):  # None: not a browser, no Origin header
                answers.append(await accepted(url, trust, additional_headers=bearer(TOKEN), origin=origin))
        return statuses, answers

    statuses, answers = asyncio.run(main())
    assert statuses == ([403] * 6 + [400]) * 2
    assert len(answers) == 6 and all(is_welcome(a) for a in answers), answers


@needs_openssl
def test_a_refused_handshake_does_not_disturb_a_live_session(daemon, trust) -> None:
    pcm = (SPEECH * 32767).astype("<i2").tobytes()

    async def main() -> tuple[list[dict], list[int]]:
        events, statuses = [], []
        async with connect(daemon.url, ssl=trust, additional_headers=bearer(TOKEN)) as ws:
            await ws.send(json.dumps({"type": "start", "task": "st", "target_lang": "de", "sample_rate": 16000}))
            for n, i in enumerate(range(0, len(pcm), 3200)):
                await ws.send(pcm[i : i + 3200])
                if n % 10 == 0:
                    statuses.append(await refused(daemon.url, trust, additional_headers=bearer("nope")))
                    statuses.append(await refused(daemon.vosk_url, trust, additional_headers=bearer(TOKEN),
                                                  origin="https://evil.example"))
            await ws.send(json.dumps({"type": "stop"}))
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except ConnectionClosed:
                pass
        return events, statuses

    events, statuses = asyncio.run(main())
    assert set(statuses) == {401, 403} and len(statuses) >= 10
    assert events[0]["type"] == "ready" and events[-1]["type"] == "done"
    assert len([e for e in events if e["type"] == "final"]) == 2


# --- systemd ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_file_verifies_and_its_exposure_score_is_in_the_readme(tmp_path) -> None:
    """As bin/install-service installs it: @ROOT@ is the checkout (whose .venv bin/setup made)."""
    unit = tmp_path / "tympan.service"
    unit.write_text((REPO / "configs" / "systemd" / "tympan.service").read_text().replace("@ROOT@", str(REPO)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                              text=True)
    found = re.search(r"exposure level for tympan\.service: (\d+\.\d) (\w+)", security.stdout)
    assert found, security.stdout[-2000:]
    score, verdict = float(found.group(1)), found.group(2)
    assert score <= 2.5 and verdict == "OK", security.stdout[-2000:]
    page = (REPO / "docs" / "operations.md").read_text()
    recorded = re.search(r"`systemd-analyze security(?: --offline=yes)?` rates its\s+exposure (\d+\.\d)", page)
    assert recorded and float(recorded.group(1)) == score, f"docs/operations.md should record the score {score}"
