"""Acoustic variety for synthetic speech: silence, reverberation, noise and level.

Each utterance's augmentation is drawn once from a random generator seeded with the build
seed and the utterance id (`choose`), stored as plain data (it goes into the audio's cache key
and the corpus's utterance list), and applied by a pure function of that data (`apply`).
Noise and room responses are made in numpy from the stored seed, so a rebuild gives the same
audio. Tempo and pitch changes go through sox (`sox_effects`).
"""

from __future__ import annotations

import random
import subprocess
from typing import Any

import numpy as np

from tympan.errors import TympanError

NOISE_COLORS = ("white", "pink", "brown")


class AugmentError(TympanError, RuntimeError):
    """An augmentation could not be applied (bad parameters, sox failure)."""


def sox_effects(audio: np.ndarray, rate: int, effects: list[str]) -> np.ndarray:
    """Run mono float32 audio through a sox effects chain (rate unchanged)."""
    raw = ["-t", "f32", "-r", str(rate), "-c", "1"]
    proc = subprocess.run(["sox", "-V1", *raw, "-", *raw, "-", *effects],
                          input=np.ascontiguousarray(audio, dtype="<f4").tobytes(), capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise AugmentError(f"sox {' '.join(effects)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise with a white (flat), pink (1/f) or brown (1/f^2) power spectrum."""
    if color not in NOISE_COLORS:
        raise AugmentError(f"unknown noise color {color!r} (colors: {', '.join(NOISE_COLORS)})")
    white = rng.standard_normal(n)
    if color != "white":
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1] if n > 1 else 1.0
        # Below ~20 Hz at 16 kHz the 1/f slope would be all rumble: flatten it there.
        f = np.maximum(f, 20.0 / 16000.0)
        spectrum /= f ** (0.5 if color == "pink" else 1.0)
        white = np.fft.irfft(spectrum, n)
    white -= white.mean()
    return (white / max(float(np.sqrt(np.mean(white**2))), 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, color: str, rng: np.random.Generator,
              speech_power: float | None = None) -> np.ndarray:
    """Add noise at `snr_db` relative to `speech_power` (default: the power of `audio`)."""
    power = float(np.mean(audio.astype(np.float64) ** 2)) if speech_power is None else speech_power
    if power <= 0:
        raise AugmentError("cannot add noise at an SNR to silent audio")
    noise = colored_noise(len(audio), color, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def room_response(rate: int, rt60: float, drr_db: float, damping: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: the direct sound, then a decaying diffuse tail.

    rt60: seconds for the tail to fall by 60 dB. drr_db: direct-to-reverberant energy ratio.
    damping in [0, 1): how much the tail loses high frequencies (a one-pole low-pass).
    """
    if not 0.05 <= rt60 <= 3.0 or not 0.0 <= damping < 1.0:
        raise AugmentError(f"room parameters out of range: rt60={rt60}, damping={damping}")
    n = int(rt60 * 1.1 * rate)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)  # 6.908 = ln(1000): -60 dB at rt60
    if damping:
        tail = _one_pole(tail, damping)
    predelay = int(rng.uniform(0.005, 0.02) * rate)
    tail[:predelay] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail**2)), 1e-12))
    tail[0] = 1.0
    return tail.astype(np.float32)


def _one_pole(x: np.ndarray, a: float) -> np.ndarray:
    """y[i] = (1 - a) x[i] + a y[i-1], computed by blocks of the closed form to stay in numpy."""
    out = np.empty_like(x)
    prev = 0.0
    block = 256
    powers = a ** np.arange(1, block + 1)
    kernel = (1 - a) * a ** np.arange(block)
    for start in range(0, len(x), block):
        seg = x[start:start + block]
        m = len(seg)
        y = np.convolve(seg, kernel[:m])[:m] + prev * powers[:m]
        out[start:start + m] = y
        prev = float(y[-1])
    return out


def add_reverb(audio: np.ndarray, rate: int, rt60: float, drr_db: float, damping: float,
               rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room; the output is longer by the room's tail, level kept."""
    rir = room_response(rate, rt60, drr_db, damping, rng)
    n = len(audio) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(rir, size), size)[:n]
    peak_in = float(np.max(np.abs(audio)))
    peak_out = float(np.max(np.abs(wet)))
    return (wet * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def trim_silence(audio: np.ndarray, rate: int, floor_db: float = -45.0, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading and trailing samples below `floor_db` of the peak (engines pad differently)."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak <= 0:
        return audio
    loud = np.flatnonzero(np.abs(audio) > peak * 10 ** (floor_db / 20))
    margin = int(margin_s * rate)
    return audio[max(0, loud[0] - margin): loud[-1] + margin + 1]


def choose(rng: random.Random, noise_share: float = 0.5, reverb_share: float = 0.5) -> dict[str, Any]:
    """Draw one utterance's augmentation (plain data: it is part of the audio's cache key)."""
    aug: dict[str, Any] = {
        "lead_s": round(rng.uniform(0.1, 0.5), 2),
        "trail_s": round(rng.uniform(0.1, 0.5), 2),
        "peak_db": round(rng.uniform(-18.0, -1.0), 1),
        "seed": rng.randrange(1 << 31),
    }
    if rng.random() < reverb_share:
        aug["reverb"] = {"rt60": round(rng.uniform(0.2, 0.8), 2), "drr_db": round(rng.uniform(-2.0, 10.0), 1),
                         "damping": round(rng.uniform(0.0, 0.8), 2)}
    if rng.random() < noise_share:
        aug["noise"] = {"color": rng.choice(NOISE_COLORS), "snr_db": round(rng.uniform(5.0, 25.0), 1)}
    return aug


def apply(audio: np.ndarray, rate: int, aug: dict[str, Any]) -> np.ndarray:
    """Trim, reverberate, pad with silence, add noise, set the level: in that order."""
    rng = np.random.default_rng(aug["seed"])
    audio = trim_silence(np.asarray(audio, dtype=np.float32), rate)
    if not len(audio) or float(np.max(np.abs(audio))) == 0.0:
        raise AugmentError("the synthesised audio is silent")
    if "reverb" in aug:
        r = aug["reverb"]
        audio = add_reverb(audio, rate, r["rt60"], r["drr_db"], r["damping"], rng)
    speech_power = float(np.mean(audio.astype(np.float64) ** 2))
    audio = np.concatenate([np.zeros(int(aug["lead_s"] * rate), np.float32), audio,
                            np.zeros(int(aug["trail_s"] * rate), np.float32)])
    if "noise" in aug:
        n = aug["noise"]
        audio = add_noise(audio, n["snr_db"], n["color"], rng, speech_power=speech_power)
    return (audio * (10 ** (aug["peak_db"] / 20) / float(np.max(np.abs(audio))))).astype(np.float32)
