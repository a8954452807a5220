"""`tympan stream`: stream a recording or the microphone to a daemon and print what comes back."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from tympan.errors import TympanError


def read_pcm16(path: Path) -> tuple[bytes, int]:
    """A WAV/FLAC file as mono PCM16 bytes at its own rate (the daemon resamples)."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes(), int(rate)


async def file_chunks(path: Path, chunk_ms: int, realtime: bool) -> AsyncIterator[tuple[bytes, int]]:
    pcm, rate = read_pcm16(path)
    step = rate * chunk_ms // 1000 * 2
    t0 = time.monotonic()
    for i in range(0, len(pcm), step):
        if realtime:  # pace like a live microphone
            await asyncio.sleep(max(0.0, t0 + (i / 2 / rate) - time.monotonic()))
        yield pcm[i : i + step], rate


async def mic_chunks(rate: int, chunk_ms: int) -> AsyncIterator[tuple[bytes, int]]:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise TympanError(f"--mic needs the sounddevice package and PortAudio: {e}") from None
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def callback(indata: Any, frames: int, when: Any, status: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, bytes(indata))

    with sd.RawInputStream(samplerate=rate, channels=1, dtype="int16", blocksize=rate * chunk_ms // 1000,
                           callback=callback):
        while True:
            yield await queue.get(), rate


async def stream(url: str, chunks: AsyncIterator[tuple[bytes, int]], request: dict[str, Any],
                 on_event: Callable[[dict[str, Any]], None], token: str | None = None) -> list[dict[str, Any]]:
    """Send the audio, then `stop`; returns every event received, up to `done`."""
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else None
    events: list[dict[str, Any]] = []
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        first = await chunks.__anext__()
        await ws.send(json.dumps({"type": "start", "sample_rate": first[1], "encoding": "pcm_s16le", **request}))

        async def receive() -> None:
            async for message in ws:
                ev = json.loads(message)
                events.append(ev)
                on_event(ev)
                if ev["type"] == "done":
                    return

        receiver = asyncio.create_task(receive())
        try:
            await ws.send(first[0])
            async for data, _ in chunks:
                if receiver.done():
                    break
                await ws.send(data)
            if not receiver.done():
                await ws.send(json.dumps({"type": "stop"}))
        except (KeyboardInterrupt, asyncio.CancelledError):
            await ws.send(json.dumps({"type": "stop"}))
        await receiver
    return events


def printer(as_json: bool) -> Callable[[dict[str, Any]], None]:
    def show(ev: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(ev, ensure_ascii=False), flush=True)
        elif ev["type"] == "partial" and sys.stdout.isatty():
            print(f"\r\033[K… {ev['text']}", end="", flush=True)
        elif ev["type"] == "final":
            prefix = "\r\033[K" if sys.stdout.isatty() else ""
            print(f"{prefix}[{ev['start']:7.2f}-{ev['end']:7.2f}] {ev['text']}", flush=True)
        elif ev["type"] == "error":
            print(f"error ({ev['code']}): {ev['message']}", file=sys.stderr, flush=True)

    return show
