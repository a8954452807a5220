"""Real human speech for evaluation: the recordings two Debian packages ship, as an ASR manifest.

About 24 s of read English (14 utterances) from other speakers and microphones than any synthetic voice:
figures on it show the domain shift that synthetic test sets hide.

- `alsa-utils`: /usr/share/sounds/alsa/{Front,Rear}_{Left,Center,Right}.wav, Side_{Left,Right}.wav
  (48 kHz); the file name is the transcript ("Front_Center.wav" -> "Front, center").
  Noise.wav is not speech and is left out.
- `pocketsphinx-testdata`: cards/00[1-5].wav (16 kHz) with their transcripts in
  cards/cards.transcription ("ten of clubs"), and goforward.raw (headerless 16 kHz s16le,
  "go forward ten meters").

Each becomes a 16 kHz mono PCM16 WAV under `OUT/audio/`, listed in `OUT/real.jsonl` in the
training manifest format (task `asr`, English).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tympan.atomic import atomic_directory
from tympan.audio import load_audio, write_wav
from tympan.errors import TympanError

SAMPLE_RATE = 16000
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
SPHINX_TEST_DATA = Path("/usr/share/pocketsphinx/test/data")
ALSA_NAMES = [f"{side}_{pos}" for side in ("Front", "Rear") for pos in ("Left", "Center", "Right")]
ALSA_NAMES += ["Side_Left", "Side_Right"]
CARDS = [f"{i:03d}" for i in range(1, 6)]
GOFORWARD_TEXT = "go forward ten meters"
MANIFEST = "real.jsonl"


class MissingRecordingError(TympanError, RuntimeError):
    """A recording (or its transcript) is absent: the Debian package that ships it is not installed."""


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise MissingRecordingError(f"{path} not found: install the Debian package {package} "
                                    f"(apt-get install {package})")
    return path


def alsa_transcript(name: str) -> str:
    """'Front_Center' -> 'Front, center': what the speaker says."""
    first, second = name.split("_")
    return f"{first}, {second.lower()}"


def read_cards_transcription(path: Path) -> dict[str, str]:
    """Sphinx transcription lines, `<s> ten of clubs </s> (001)` -> {'001': 'ten of clubs'}."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*", line)
        if m is None:
            raise MissingRecordingError(f"{path}:{lineno}: not a transcription line: {line!r}")
        out[m.group(2)] = " ".join(m.group(1).split())
    return out


def read_raw_pcm16(path: Path) -> np.ndarray:
    """Headerless little-endian 16-bit mono PCM as float32 in [-1, 1]."""
    return (np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


def build_real_manifest(
    out_dir: Path, alsa_dir: Path = ALSA_SOUNDS, sphinx_dir: Path = SPHINX_TEST_DATA
) -> Path:
    """Convert the recordings into `out_dir` (rebuilt as a whole, atomically); returns `out_dir/real.jsonl`.

    A missing recording stops the build with the name of the Debian package that ships it. An
    existing `out_dir` is replaced only if it is such a corpus (it holds real.jsonl) or empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise MissingRecordingError(f"{out_dir} exists and is not a real-speech corpus (no {MANIFEST}); "
                                    "refusing to replace it")
    # (id, audio, transcript), all checked before anything is written.
    sources: list[tuple[str, np.ndarray, str]] = []
    for name in ALSA_NAMES:
        wav = _require(alsa_dir / f"{name}.wav", "alsa-utils")
        sources.append((f"alsa-{name.lower().replace('_', '-')}", load_audio(wav, SAMPLE_RATE), alsa_transcript(name)))
    cards_dir = sphinx_dir / "cards"
    transcripts = read_cards_transcription(_require(cards_dir / "cards.transcription", "pocketsphinx-testdata"))
    for card in CARDS:
        wav = _require(cards_dir / f"{card}.wav", "pocketsphinx-testdata")
        if card not in transcripts:
            raise MissingRecordingError(f"{cards_dir / 'cards.transcription'}: no transcript for {card}")
        sources.append((f"cards-{card}", load_audio(wav, SAMPLE_RATE), transcripts[card]))
    raw = _require(sphinx_dir / "goforward.raw", "pocketsphinx-testdata")
    sources.append(("goforward", read_raw_pcm16(raw), GOFORWARD_TEXT))

    with atomic_directory(out_dir) as tmp:
        (tmp / "audio").mkdir()
        lines = []
        for uid, audio, text in sources:
            write_wav(tmp / "audio" / f"{uid}.wav", audio, SAMPLE_RATE)
            lines.append({"id": uid, "audio": f"audio/{uid}.wav", "task": "asr", "src_lang": "en",
                          "tgt_lang": "en", "target": text, "text": text})
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return out_dir / MANIFEST
