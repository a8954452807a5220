"""Sound that is not speech, made on the fly: what a speech service must not write words for."""

from __future__ import annotations

import numpy as np

SCALE = 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)  # a major scale's ratios


def _level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio)))) or 1.0
    return (audio / rms * 10 ** (dbfs / 20)).astype(np.float32)


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with a 1/f^exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def _melody(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Notes of a scale with harmonics and a decay, over a bass note and a hi-hat of noise bursts."""
    out = np.zeros(n)
    base = rng.uniform(180, 330)
    beat = int(rate * rng.uniform(0.2, 0.5))
    for start in range(0, n, beat):
        length = min(beat * rng.integers(1, 3), n - start)
        t = np.arange(length) / rate
        f0 = base * rng.choice(SCALE)
        note = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * np.exp(-3 * t)
        out[start : start + length] += note
        hat = min(int(0.03 * rate), n - start)
        out[start : start + hat] += 0.3 * rng.standard_normal(hat) * np.linspace(1, 0, hat)
    t = np.arange(n) / rate
    return out + 0.5 * np.sin(2 * np.pi * base / 2 * t)


def _chords(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    root = rng.uniform(110, 220)
    pad = sum(np.sin(2 * np.pi * root * r * t + rng.uniform(0, 6)) for r in (1, SCALE[2], SCALE[4], 2))
    return pad * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))


def _tones(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    kind = rng.integers(3)
    if kind == 0:  # a pure tone
        return np.sin(2 * np.pi * rng.uniform(200, 3000) * t)
    if kind == 1:  # a dial-tone pair, on and off
        return (np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t)) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    return np.sin(2 * np.pi * (200 + 800 * t / t[-1]) * t)  # a sweep


def _hum(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    f = rng.choice([50.0, 60.0])
    return sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 8)) + 0.05 * rng.standard_normal(n)


def mixed_noise_and_music(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """`seconds` of pieces 3-20 s long: white, pink and brown noise, mains hum, tones, a melody, chords, and music
    under noise, each at -40 to -12 dBFS with gaps of silence between some."""
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    pieces: list[np.ndarray] = []
    made = 0
    while made < total:
        n = min(int(rng.uniform(3, 20) * rate), total - made)
        kind = rng.integers(7)
        if kind == 0:
            sound = _coloured(rng, n, float(rng.choice([0.0, 1.0, 2.0])))
        elif kind == 1:
            sound = _hum(rng, n, rate)
        elif kind == 2:
            sound = _tones(rng, n, rate)
        elif kind == 3:
            sound = _melody(rng, n, rate)
        elif kind == 4:
            sound = _chords(rng, n, rate)
        elif kind == 5:
            sound = _melody(rng, n, rate) + 0.5 * _coloured(rng, n, 1.0) * np.std(_melody(rng, n, rate))
        else:
            sound = np.zeros(n)
        piece = _level(sound, float(rng.uniform(-40, -12))) if kind != 6 else sound.astype(np.float32)
        pieces.append(np.clip(piece, -1, 1))
        made += n
    return np.concatenate(pieces).astype(np.float32)
