"""The browser page (GET /, daemon/static) in real headless Chromium against a real daemon: Chromium's
fake microphone plays human recordings, the page captures them (AudioWorklet, 16 kHz PCM16) and streams
them over /v1/stream, and shows what the daemon sent; a refused or missing microphone; the daemon going
away and coming back; the token and the daemon's errors; the worklet's resampling, measured."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, alsa_speech, silence, write_wav
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
# The README's picture (docs/page.png) is refreshed by copying this one; a test run never writes a tracked file.
DOCS_SHOT = ARTIFACTS / "page.png"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
expect.set_options(timeout=20_000)  # a loaded 2-core machine: audio, model and browser share it
GREY = "rgb(105, 105, 105)"  # --muted in style.css: partial text not yet stable

# Every mutation of the page, as the user saw it: the partial line (its stable and greyed parts and the
# greyed part's colour), how many finals were listed, and the level meter.
RECORDER = """
window.seen = [];
new MutationObserver(() => {
  const unstable = document.querySelector('#partial .unstable');
  if (!unstable) return;
  window.seen.push({stable: document.querySelector('#partial .stable').textContent, unstable: unstable.textContent,
                    colour: getComputedStyle(unstable).color, finals: document.querySelectorAll('#finals li').length,
                    level: document.getElementById('level').value});
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""


@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.daemon.cli import default_bundle

    return default_bundle()


@pytest.fixture(scope="module")
def daemon(bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    with DaemonProcess(bundle, tmp_path_factory.mktemp("daemon")) as d:
        yield d


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone plays, in a loop: two short utterances between pauses."""
    audio = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.5), alsa_speech("Rear_Right"),
                            silence(1.5)])
    return write_wav(tmp_path_factory.mktemp("wav") / "speech.wav", audio)


@pytest.fixture(scope="module")
def playwright() -> Playwright:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as p:
        yield p


def chromium(playwright: Playwright, profile: Path, args: list[str]) -> BrowserContext:
    """Headless Chromium with a fresh profile (user-data-dir)."""
    context = playwright.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                            args=ARGS + args, viewport={"width": 900, "height": 600})
    context.set_default_timeout(20_000)
    return context


@pytest.fixture(scope="module")
def mic_browser(playwright: Playwright, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory):
    """Microphone allowed (no prompt); the microphone is the WAV file."""
    context = chromium(playwright, tmp_path_factory.mktemp("profile"),
                       ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-audio-capture={speech_wav}"])
    yield context
    context.close()


class Watch:
    """What went over the page's websockets, as Chromium saw it (not as the page reports it), and script errors."""

    def __init__(self, page: Page) -> None:
        self.opened: list[dict] = []
        self.errors: list[str] = []
        page.on("websocket", self._opened)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _opened(self, ws) -> None:
        log: dict = {"url": ws.url, "received": [], "sent": []}
        self.opened.append(log)
        ws.on("framereceived", lambda payload: log["received"].append(json.loads(payload)))
        ws.on("framesent", lambda payload: log["sent"].append(json.loads(payload) if isinstance(payload, str)
                                                               else len(payload)))


def open_page(context: BrowserContext, daemon: DaemonProcess, query: str = "") -> tuple[Page, Watch]:
    page = context.new_page()
    page.add_init_script(RECORDER)
    watch = Watch(page)
    page.goto(f"{daemon.http}/{query}")
    page.select_option("#task", "st")
    page.select_option("#lang", "de")
    return page, watch


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"))


def test_the_page_streams_the_microphone_and_shows_what_the_daemon_sent(daemon, mic_browser) -> None:
    page, watch = open_page(mic_browser, daemon)
    expect(page.locator("#question")).to_be_hidden()  # SQA only
    expect(page.locator("#lang option[value=en]")).to_be_disabled()  # ST translates English speech
    page.click("#start")
    expect(page.locator("#status")).to_contain_text("Streaming: Translate (ST) into German")
    # The first final, then a partial of the next utterance: what the README's picture shows.
    page.wait_for_function("document.querySelectorAll('#finals li').length >= 1 && "
                           "document.querySelector('#partial .unstable').textContent", timeout=30_000)
    shot(page, "streaming")
    with contextlib.suppress(PlaywrightTimeout):  # for the picture: the meter up, too, as it often is
        page.wait_for_function("document.querySelector('#partial .unstable').textContent && "
                               "document.getElementById('level').value > 0.3", timeout=5_000)
    DOCS_SHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS_SHOT), clip={"x": 0, "y": 0, "width": 900, "height": 360})
    streaming = page.evaluate("window.seen.length")
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("Stopped.")
    shot(page, "stopped")

    assert len(watch.opened) == 1
    ws = watch.opened[0]
    assert ws["url"] == daemon.url
    start = ws["sent"][0]
    assert start == {"type": "start", "task": "st", "target_lang": "de", "sample_rate": 16000,
                     "encoding": "pcm_s16le"}
    audio = [n for n in ws["sent"] if isinstance(n, int)]
    assert audio and all(n % 2 == 0 for n in audio) and 3000 <= np.median(audio) <= 3400  # ~100 ms of PCM16
    assert ws["sent"][-1] == {"type": "stop"} and ws["received"][-1]["type"] == "done"

    # The page lists exactly the finals the daemon sent, in order.
    sent = [e for e in ws["received"] if e["type"] == "final"]
    shown = page.eval_on_selector_all("#finals li", "lis => lis.map(li => [Number(li.dataset.segment), "
                                      "li.querySelector('.text').textContent, Number(li.dataset.start), "
                                      "Number(li.dataset.end)])")
    assert shown == [[e["segment_id"], e["text"], e["start"], e["end"]] for e in sent]
    assert len(sent) >= 2 and any(e["text"] for e in sent), sent
    assert page.evaluate("window.tympanEvents") == ws["received"]

    # Before the first final appeared, its partial was on screen, greyed while not yet stable.
    seen = page.evaluate("window.seen")
    before = [s for s in seen if s["finals"] == 0]
    greyed = [s for s in before if s["unstable"] and s["colour"] == GREY]
    partials = [e for e in ws["received"] if e["type"] == "partial" and e["segment_id"] == sent[0]["segment_id"]]
    assert greyed and {s["unstable"] for s in greyed} <= {p["text"][p["stable_len"]:] for p in partials}
    assert page.evaluate("getComputedStyle(document.querySelector('#finals .text')).color") != GREY
    # The level meter followed the audio: up for speech, down in the pauses.
    levels = [s["level"] for s in seen[:streaming]]
    assert max(levels) > 0.5 and min(levels[levels.index(max(levels)):]) < 0.2, levels
    assert page.evaluate("document.getElementById('level').value") == 0  # microphone closed
    assert not watch.errors


def test_the_daemon_going_away_is_shown_and_the_page_reconnects(daemon, mic_browser) -> None:
    page, watch = open_page(mic_browser, daemon)
    page.click("#start")
    expect(page.locator("#status")).to_contain_text("Streaming")
    try:
        gone_and_back(page, watch, daemon)
    finally:
        if daemon.proc.poll() is not None:  # for the other tests
            daemon.start()
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("Stopped.")
    assert not watch.errors


def gone_and_back(page: Page, watch: Watch, daemon: DaemonProcess) -> None:
    daemon.stop()
    problem = page.locator("#problem")
    expect(problem).to_contain_text("Lost the daemon")
    expect(problem).to_contain_text("attempt 2")  # the first reconnection failed: the daemon is down
    expect(page.locator("#status")).to_contain_text(re.compile("reconnecting", re.I))
    shot(page, "daemon-gone")
    daemon.start()  # the same port
    back = time.monotonic()
    expect(problem).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("Streaming")
    reconnected_in = time.monotonic() - back
    # Streaming resumed: a new session that gets audio and gives finals.
    page.wait_for_function("tympanEvents.slice(tympanEvents.findLastIndex(e => e.type === 'ready'))"
                           ".some(e => e.type === 'final')", timeout=30_000)
    shot(page, "reconnected")
    first, last = watch.opened[0], watch.opened[-1]
    assert len(watch.opened) >= 3  # connected, refused at least once, connected again
    assert first["received"][-1]["type"] != "done"  # the daemon went away mid-stream
    ready = [ws["received"][0] for ws in (first, last)]
    assert [r["type"] for r in ready] == ["ready", "ready"] and ready[0]["session_id"] != ready[1]["session_id"]
    assert last["sent"][0]["type"] == "start"
    # Chromium's frame events reach this process after the page's own: wait for them rather than race them.
    def audio_frames() -> int:
        return sum(isinstance(n, int) for n in last["sent"])

    deadline = time.monotonic() + 10
    while audio_frames() < 10 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert audio_frames() >= 10, audio_frames()
    assert reconnected_in < 8 + 2, reconnected_in  # the next try: backoff 0.5 s, 1 s, 2 s ... capped at 8 s


def test_a_refused_or_missing_microphone_is_explained(playwright, daemon, speech_wav, tmp_path) -> None:
    # No --use-fake-ui-for-media-stream and no permission granted: Chromium refuses the microphone.
    context = chromium(playwright, tmp_path / "profile", ["--use-fake-device-for-media-stream",
                                                          f"--use-file-for-fake-audio-capture={speech_wav}"])
    try:
        page, watch = open_page(context, daemon)
        page.click("#start")
        problem = page.locator("#problem")
        expect(problem).to_contain_text("Microphone access was refused")
        expect(problem).to_contain_text("press Start again")
        expect(page.locator("#start")).to_be_enabled()
        expect(page.locator("#stop")).to_be_disabled()
        shot(page, "mic-refused")
        assert not watch.opened  # nothing streamed

        # The choices follow the task: ASR is English only, SQA asks for a question.
        page.select_option("#task", "asr")
        expect(page.locator("#lang")).to_have_value("en")
        expect(page.locator("#lang")).to_be_disabled()
        page.select_option("#task", "sqa")
        expect(page.locator("#question")).to_be_visible()
        page.click("#start")
        expect(problem).to_contain_text("Type a question first")

        # No microphone at all: getUserMedia's NotFoundError (stubbed: this machine's fake device always exists).
        page.add_init_script("navigator.mediaDevices.getUserMedia = async () => { "
                             "throw new DOMException('Requested device not found', 'NotFoundError'); };")
        page.reload()
        page.click("#start")
        expect(problem).to_contain_text("No microphone was found")
        shot(page, "mic-missing")
    finally:
        context.close()


def test_the_token_is_passed_on_and_daemon_errors_are_shown(bundle, mic_browser, tmp_path) -> None:
    config = '[auth]\ntoken = "s3cret"\n[limits]\nmax_sessions = 1\n'
    with DaemonProcess(bundle, tmp_path / "daemon", config) as daemon:
        # Without the token the handshake is refused (HTTP 401): the page says what to check, and stops.
        page, watch = open_page(mic_browser, daemon)
        page.click("#start")
        expect(page.locator("#problem")).to_contain_text("refused the websocket: check the ?token=")
        expect(page.locator("#status")).to_have_text("Stopped.")
        page.close()
        busy, watch = open_page(mic_browser, daemon, "?token=s3cret")
        busy.click("#start")
        expect(busy.locator("#status")).to_contain_text("Streaming")
        assert watch.opened[0]["url"] == daemon.url + "?token=s3cret"
        # A second session is one too many: the daemon's `error` event, with its code; the page retries.
        page, watch = open_page(mic_browser, daemon, "?token=s3cret")
        page.click("#start")
        problem = page.locator("#problem")
        expect(problem).to_contain_text("The daemon reported an error (overloaded): the server is at capacity")
        expect(problem).to_contain_text("Reconnecting in")  # overloaded is worth retrying
        shot(page, "daemon-error")
        assert watch.opened[0]["received"][0]["type"] == "error"
        page.close()
        busy.close()


RESAMPLE = """async ([rate, freq]) => {
  // One second of a tone (amplitude 0.5) at `rate` through the capture worklet, rendered offline.
  const ctx = new OfflineAudioContext(1, rate, rate);
  await ctx.audioWorklet.addModule('static/capture-worklet.js');
  const node = new AudioWorkletNode(ctx, 'capture', {numberOfOutputs: 0});
  const chunks = [];
  const flushed = new Promise((resolve) => {
    node.port.onmessage = (e) => (e.data === 'flushed' ? resolve() : chunks.push(Array.from(e.data)));
  });
  const tone = new OscillatorNode(ctx, {frequency: freq});
  tone.connect(new GainNode(ctx, {gain: 0.5})).connect(node);
  tone.start();
  await ctx.startRendering();
  node.port.postMessage('flush');
  await flushed;
  return chunks;
}"""


def test_the_capture_worklet_resamples_to_16khz_without_aliasing(mic_browser, daemon) -> None:
    page = mic_browser.new_page()
    page.goto(daemon.http + "/")
    # A tone passes, at its frequency; one above 16 kHz's Nyquist (it would alias to 6 kHz) is filtered out.
    for rate, freq, rms in ((48000, 1000, 0.5 / 2**0.5), (44100, 1000, 0.5 / 2**0.5), (8000, 1000, 0.5 / 2**0.5),
                            (48000, 10000, 0.0), (44100, 10000, 0.0)):
        chunks = page.evaluate(RESAMPLE, [rate, freq])
        # 100 ms chunks, then the rest; one second (+ the render's last block, - the filter's delay)
        assert all(len(c) == 1600 for c in chunks[:-1]) and abs(sum(map(len, chunks)) - 16000) < 200
        x = np.concatenate(chunks)[100:] / 32768
        assert abs(np.sqrt(np.mean(x**2)) - rms) < 0.005, (rate, freq)
        if rms:
            spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
            assert abs(np.argmax(spectrum) * 16000 / len(x) - freq) < 2
    page.close()
