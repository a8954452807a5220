"""A toy corpus made on the fly: spoken number sequences as tone patterns, with real translations.

Each number word has its own tone signature (two partials and a length), so the audio
carries the words, and a tiny model can learn ASR, ST (en->de/it/zh) and a small SQA
task from it in seconds. It exercises every code path of training without any download;
it is not speech. Config files name it as `toy:train` / `toy:dev` in `data.train/dev`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from tympan.atomic import atomic_directory
from tympan.audio import write_wav

SAMPLE_RATE = 16000
WORDS = {
    "one": ("eins", "uno", "一"),
    "two": ("zwei", "due", "二"),
    "three": ("drei", "tre", "三"),
    "four": ("vier", "quattro", "四"),
    "five": ("fünf", "cinque", "五"),
    "six": ("sechs", "sei", "六"),
    "seven": ("sieben", "sette", "七"),
    "eight": ("acht", "otto", "八"),
}
COUNTS = {
    2: ("two", "zwei", "due", "两个"),
    3: ("three", "drei", "tre", "三个"),
    4: ("four", "vier", "quattro", "四个"),
}
LANGS = ("de", "it", "zh")
QUESTION = "How many numbers are said?"


def _tone(word_index: int, rng: random.Random) -> np.ndarray:
    base = 220.0 * (1.12 ** word_index)
    seconds = 0.18 + 0.02 * (word_index % 3) + rng.uniform(-0.01, 0.01)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * base * t) + 0.5 * np.sin(2 * np.pi * base * (2.5 + 0.1 * word_index) * t)
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) * 40)
    return (0.3 * wave * envelope).astype(np.float32)


def render(words: list[str], rng: random.Random) -> np.ndarray:
    names = list(WORDS)
    gap = np.zeros(int(0.06 * SAMPLE_RATE), dtype=np.float32)
    parts = [gap]
    for w in words:
        parts += [_tone(names.index(w), rng), gap]
    audio = np.concatenate(parts)
    return audio + np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.003, audio.shape).astype(np.float32)


def translate(words: list[str], lang: str) -> str:
    i = LANGS.index(lang)
    out = [WORDS[w][i] for w in words]
    return "".join(out) if lang == "zh" else " ".join(out)


def _split(n: int, seed: int, audio_dir: Path, prefix: str) -> list[dict]:
    rng = random.Random(f"{seed}:{prefix}")
    lines: list[dict] = []
    for i in range(n):
        words = [rng.choice(list(WORDS)) for _ in range(rng.randint(2, 4))]
        name = f"{prefix}-{i:04d}.wav"
        write_wav(audio_dir / name, render(words, rng), SAMPLE_RATE)
        text = " ".join(words)
        uid = f"{prefix}-{i:04d}"
        lines.append({"id": f"{uid}-asr", "audio": f"audio/{name}", "task": "asr", "src_lang": "en",
                      "tgt_lang": "en", "target": text, "text": text})
        lang = LANGS[i % 3]
        lines.append({"id": f"{uid}-st", "audio": f"audio/{name}", "task": "st", "src_lang": "en",
                      "tgt_lang": lang, "target": translate(words, lang), "text": text})
        count = COUNTS[len(words)]
        qlang = ("en", *LANGS)[i % 4]
        lines.append({"id": f"{uid}-sqa", "audio": f"audio/{name}", "task": "sqa", "src_lang": "en",
                      "tgt_lang": qlang, "question": QUESTION, "target": count[("en", *LANGS).index(qlang)],
                      "text": text})
        # Text-only MT line for the LoRA stage.
        mt_lang = LANGS[(i + 1) % 3]
        lines.append({"id": f"{uid}-mt", "task": "st", "src_lang": "en", "tgt_lang": mt_lang,
                      "target": translate(words, mt_lang), "text": text})
    return lines


def build_toy(out: Path, n_train: int = 24, n_dev: int = 6, seed: int = 0) -> Path:
    """Write train.jsonl, dev.jsonl and audio/ under `out` (atomically); returns `out`."""
    if (out / "dev.jsonl").is_file():
        return out
    with atomic_directory(out) as tmp:
        (tmp / "audio").mkdir()
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = _split(n, seed, tmp / "audio", split)
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return out
