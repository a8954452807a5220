"""The second pass of hearing: Whisper's own decoder reads the whole utterance and writes the final's words.

The first pass (a CTC bridge's greedy text) is instant but was trained on a few dozen hours of speech; Whisper's
decoder learnt from 680k hours. A final is read once, through CTranslate2 (the engine under faster-whisper):

- the window: the utterance's log-mel frames, padded with zeros to max(speech + `pad_s`, `window_s`). Whisper was
  trained on 30 s windows; on the bare utterance it loops, and past about 10 s the extra zeros cost time and gave
  no better words (docs/hearing.md);
- greedy decoding with a length cap from the duration, then the decode loop's guard against repeats;
- the guard against text on silence and noise, faster-whisper's checks: no-speech probability with average
  log-probability, and the compression ratio of the text (a loop compresses well);
- word times from the cross-attention of Whisper's alignment heads, by dynamic time warping (CTranslate2's
  `align`), split into words here.

A session's terms reach the decoder as Whisper's previous-text prompt (`<|startofprev|>`), so names spelled in
the request are spelled so in the answer.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tympan.config import check, check_fields, positive
from tympan.errors import TympanError
from tympan.features import WhisperLogMel
from tympan.runtime.decode import DEFAULT_SETTINGS, repeating_tail

SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100  # log-mel frames (hop 160 at 16 kHz)
MAX_FRAMES = 3000  # Whisper's 30 s window
ENCODER_FRAMES_PER_SECOND = 50  # the encoder halves the frame rate: the alignment's time unit
WORD_LOOP = 4  # a word said this many times in a row is Whisper looping ("no, no, no" is kept)
PHRASE_REPEAT = 5  # a run of this many words written a second time in one utterance is Whisper starting over
FILES = ("model.bin", "config.json", "tokenizer.json")  # what a hearing directory must hold, with a vocabulary
VOCABULARIES = ("vocabulary.txt", "vocabulary.json")  # CTranslate2's converters write one or the other


def model_files(directory: Path) -> list[str]:
    """The files of a CTranslate2 Whisper directory; HearingError naming what is missing."""
    missing = [f for f in FILES if not (directory / f).is_file()]
    vocabulary = [f for f in VOCABULARIES if (directory / f).is_file()]
    if not vocabulary:
        missing.append(" or ".join(VOCABULARIES))
    if missing:
        raise HearingError(f"{directory}: not a CTranslate2 Whisper directory ({', '.join(missing)} missing)")
    return [*FILES, vocabulary[0]]


class HearingError(TympanError, ValueError):
    """The Whisper files are missing or unusable, or the input cannot be read."""


def _threshold(value: float) -> str | None:
    return None if math.isfinite(value) else f"must be a finite number, got {value}"


@dataclass(frozen=True)
class HearingSettings:
    """How the second pass reads an utterance and when it refuses what it read."""

    # The encoder reads at least `window_s` and at least `pad_s` past the speech (docs/hearing.md).
    window_s: float = field(default=10.0, metadata=check(positive))
    pad_s: float = field(default=1.0, metadata=check(positive))
    # Length cap: tokens per second of audio, plus a few (no one speaks 8 tokens a second for long).
    tokens_per_second: float = field(default=8.0, metadata=check(positive))
    # faster-whisper's guard: silence when the no-speech probability is above its threshold and the text's average
    # log-probability below its own; a loop when the text compresses more than the ratio (gzip, as Whisper's).
    no_speech_threshold: float = field(default=0.6, metadata=check(_threshold))
    logprob_threshold: float = field(default=-1.0, metadata=check(_threshold))
    compression_ratio_threshold: float = field(default=2.4, metadata=check(positive))
    # An utterance whose loudest 10 ms stays below this level (dBFS) is silence: not read at all.
    silence_dbfs: float = field(default=-60.0, metadata=check(_threshold))
    # A reading of the speech up to a pause is shown as stable partial text only this sure of itself (measured
    # on prefixes of the recordings: "We're..." for "Rear" at -0.9, "8 of space" at -0.88; docs/hearing.md).
    settled_logprob: float = field(default=-0.8, metadata=check(_threshold))

    def __post_init__(self) -> None:
        check_fields(self, "hearing")

    def window_frames(self, frames: int) -> int:
        """Log-mel frames the encoder reads for an utterance of `frames` frames."""
        wanted = max(frames + round(self.pad_s * FRAMES_PER_SECOND), round(self.window_s * FRAMES_PER_SECOND))
        return min(MAX_FRAMES, wanted)


@dataclass(frozen=True)
class Word:
    """A word as Whisper wrote it (leading space removed), its times in seconds from the utterance's start, and
    the mean probability of its tokens."""

    word: str
    start: float
    end: float
    probability: float

    def shifted(self, seconds: float) -> Word:
        return Word(self.word, round(self.start + seconds, 3), round(self.end + seconds, 3), self.probability)


@dataclass(frozen=True)
class Heard:
    """What the second pass read. `refused` names the guard that threw the text away (then `text` is "")."""

    text: str
    tokens: list[int]
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    words: tuple[Word, ...] = ()
    refused: str | None = None
    looped: bool = False


# What Whisper writes for sound that is not speech (its captions' habits): music notes, bracketed descriptions.
NON_SPEECH = re.compile(r"^[\s♪♫♬♩#*.,!?-]*$|^\s*[\[(*][^\])*]*[\])*]\s*$")


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes of its zlib compression: high for text that repeats itself."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


class WhisperHearing:
    """A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json), read on the CPU in int8."""

    def __init__(self, directory: str | Path, settings: HearingSettings | None = None, threads: int | None = None,
                 compute_type: str = "int8", language: str = "en") -> None:
        # CTranslate2's OpenMP threads would spin between calls, burning the cores while the daemon waits for
        # audio; read when the library loads (an operator's own setting wins).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import ctranslate2
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        model_files(self.directory)
        self.settings = settings or HearingSettings()
        try:
            self.model = ctranslate2.models.Whisper(str(self.directory), device="cpu", compute_type=compute_type,
                                                    intra_threads=threads or 0)
        except (RuntimeError, ValueError) as e:
            raise HearingError(f"{self.directory}: CTranslate2 cannot load it: {e}") from None
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        config = json.loads((self.directory / "config.json").read_text(encoding="utf-8"))
        self.has_alignment_heads = bool(config.get("alignment_heads"))
        self.features = WhisperLogMel(num_mel_bins=self.model.n_mels, sample_rate=SAMPLE_RATE)
        self.eot = self._special("<|endoftext|>")
        self.sot_prev = self._special("<|startofprev|>")
        start = ["<|startoftranscript|>"]
        if self.model.is_multilingual:
            start += [f"<|{language}|>", "<|transcribe|>"]
        self.start = [self._special(t) for t in [*start, "<|notimestamps|>"]]

    def _special(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise HearingError(f"{self.directory}/tokenizer.json has no {token} token: not a Whisper tokenizer")
        return int(token_id)

    def prompt(self, terms: str | None = None) -> list[int]:
        """The decoder's prompt: the terms as previous text (the last 223 tokens, as Whisper keeps), then the
        start of a transcript in English without timestamps."""
        if not terms or not terms.strip():
            return list(self.start)
        previous = self.tokenizer.encode(" " + terms.strip(), add_special_tokens=False).ids[-223:]
        return [self.sot_prev, *previous, *self.start]

    def window(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """The encoder's input (1, mels, window) float32 and the utterance's own frames."""
        if audio.ndim != 1 or audio.shape[0] == 0:
            raise HearingError(f"audio must be one non-empty mono channel, got shape {audio.shape}")
        feats = self.features(np.asarray(audio, dtype=np.float32))  # (frames, mels)
        frames = min(feats.shape[0], MAX_FRAMES)
        window = np.zeros((1, feats.shape[1], self.settings.window_frames(frames)), dtype=np.float32)
        window[0, :, :frames] = feats[:frames].T
        return window, frames

    def hear(self, audio: np.ndarray, terms: str | None = None, word_times: bool = False) -> Heard:
        """Read one utterance (mono float32 at 16 kHz)."""
        import ctranslate2

        window, frames = self.window(audio)
        if peak_dbfs(audio) < self.settings.silence_dbfs:
            return Heard("", [], 1.0, 0.0, 0.0, refused="silence")
        encoded = self.model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)
        prompt = self.prompt(terms)
        cap = max(4, math.ceil(frames / FRAMES_PER_SECOND * self.settings.tokens_per_second) + 4)
        # CTranslate2 counts the prompt in max_length: the terms must not eat the words' budget.
        (result,) = self.model.generate(encoded, [prompt], beam_size=1, max_length=len(prompt) + cap,
                                        return_scores=True, return_no_speech_prob=True)
        tokens = [t for t in result.sequences_ids[0] if t < self.eot]
        looped = repeating_tail(tokens, DEFAULT_SETTINGS.repeat_ngram_max, DEFAULT_SETTINGS.repeat_times)
        if looped:
            del tokens[-looped:]
        kept = self.word_loop_cut(tokens)
        looped = looped or len(kept) < len(tokens)
        tokens = kept
        # CTranslate2's score is the sum of log-probabilities over the length; Whisper's average counts the end too.
        avg_logprob = float(result.scores[0]) * len(result.sequences_ids[0]) / (len(result.sequences_ids[0]) + 1)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        heard = Heard(text, tokens, float(result.no_speech_prob), avg_logprob, compression_ratio(text),
                      looped=bool(looped))
        refused = self.refusal(heard)
        if refused is not None:
            return Heard("", [], heard.no_speech_prob, heard.avg_logprob, heard.compression_ratio, refused=refused,
                         looped=heard.looped)
        if word_times and tokens and self.has_alignment_heads:
            words = self._words(encoded, tokens, frames, len(audio) / SAMPLE_RATE)
            heard = Heard(text, tokens, heard.no_speech_prob, heard.avg_logprob, heard.compression_ratio,
                          snap_to_sound(words, voiced_frames(audio)), looped=heard.looped)
        return heard

    def word_loop_cut(self, tokens: list[int], times: int = WORD_LOOP, phrase: int = PHRASE_REPEAT) -> list[int]:
        """The tokens before Whisper starts over: up to the first of `times` equal words in a row ("Front Front Front
        Front": Whisper on the first half second of "Front, left"), that word kept once; or up to a run of `phrase`
        words it has already written (after the end of a sentence it may write its start again). The token guard
        lets one-token words repeat 8 times and needs 3 repeats of longer ones."""
        groups = self.word_groups(tokens)
        words = [re.sub(r"[^\w']", "", self.tokenizer.decode(g, skip_special_tokens=True)).lower() for g in groups]
        seen: set[tuple[str, ...]] = set()
        for i in range(len(words)):
            if words[i] and all(w == words[i] for w in words[i : i + times]) and i + times <= len(words):
                return [t for g in groups[: i + 1] for t in g]
            run = tuple(words[i : i + phrase])
            if len(run) == phrase and all(run):
                if run in seen:
                    return [t for g in groups[:i] for t in g]
                seen.add(run)
        return tokens

    def settled(self, heard: Heard) -> bool:
        """Sure enough of itself to be shown as stable: not refused, confident, and not trailing off ("Go for...")."""
        return (heard.refused is None and heard.avg_logprob >= self.settings.settled_logprob
                and not heard.text.rstrip().endswith(("...", "…")))

    def refusal(self, heard: Heard) -> str | None:
        """Why the guard throws this text away, or None to keep it."""
        s = self.settings
        if not heard.tokens:
            return "empty"
        if heard.no_speech_prob > s.no_speech_threshold and heard.avg_logprob < s.logprob_threshold:
            return "no_speech"
        if heard.compression_ratio > s.compression_ratio_threshold:
            return "repetitive"
        if NON_SPEECH.match(heard.text):
            return "non_speech"
        return None

    # -- word times -------------------------------------------------------------------------------------------

    def word_groups(self, tokens: Sequence[int]) -> list[list[int]]:
        """Tokens grouped into words: a token that starts with a space starts a word; punctuation and word pieces
        join the word before."""
        groups: list[list[int]] = []
        for token in tokens:
            piece = self.tokenizer.decode([token], skip_special_tokens=True)
            if not groups or piece.startswith(" "):
                groups.append([token])
            else:
                groups[-1].append(token)
        return groups

    def _words(self, encoded: Any, tokens: list[int], frames: int, duration: float) -> tuple[Word, ...]:
        (result,) = self.model.align(encoded, self.start, [tokens], frames)
        pairs = np.asarray(result.alignments, dtype=np.int64).reshape(-1, 2)
        if pairs.shape[0] == 0:
            return ()
        # The time of each token: where the warping path first steps onto it (index len(tokens) is the end).
        jumps = np.concatenate([[True], np.diff(pairs[:, 0]) > 0])
        token_times = np.full(len(tokens) + 1, np.nan)
        for index, time_index in pairs[jumps]:
            if 0 <= index <= len(tokens):
                token_times[index] = time_index / ENCODER_FRAMES_PER_SECOND
        token_times[-1] = duration if np.isnan(token_times[-1]) else token_times[-1]
        # A token the path skipped takes the next token's time.
        for i in range(len(tokens) - 1, -1, -1):
            if np.isnan(token_times[i]):
                token_times[i] = token_times[i + 1]
        probs = list(result.text_token_probs)
        words: list[Word] = []
        first = 0
        previous_end = 0.0
        for group in self.word_groups(tokens):
            last = first + len(group)
            start = float(min(max(token_times[first], previous_end), duration))
            end = float(min(max(token_times[last], start), duration))
            p = float(np.mean(probs[first:last])) if len(probs) >= last else 0.0
            text = self.tokenizer.decode(group, skip_special_tokens=True).strip()
            if text:
                words.append(Word(text, round(start, 3), round(end, 3), round(p, 3)))
            previous_end, first = end, last
        return tuple(words)


def _levels(audio: np.ndarray) -> np.ndarray:
    """The level of each 10 ms of audio, dBFS (RMS)."""
    hop = SAMPLE_RATE // FRAMES_PER_SECOND
    n = len(audio) // hop
    rms = np.sqrt(np.mean(np.square(audio[: n * hop].astype(np.float64)).reshape(n, hop), axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-8))


def peak_dbfs(audio: np.ndarray) -> float:
    """The level of the loudest 10 ms (the whole clip where shorter), dBFS."""
    levels = _levels(audio)
    if levels.size:
        return float(levels.max())
    return float(20 * np.log10(max(float(np.sqrt(np.mean(np.square(audio.astype(np.float64))))), 1e-8)))


def voiced_frames(audio: np.ndarray, floor_db: float = 35.0) -> np.ndarray:
    """Per 10 ms of audio: louder than `floor_db` below the loudest 10 ms (bool)."""
    db = _levels(audio)
    return db > db.max() - floor_db if db.size else np.zeros(0, dtype=bool)


def _islands(voiced: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    """Runs of voiced frames [start, end), joined across gaps shorter than `min_gap` frames."""
    runs: list[tuple[int, int]] = []
    for i in np.flatnonzero(voiced).tolist():
        if runs and i - runs[-1][1] < min_gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def snap_to_sound(words: Sequence[Word], voiced: np.ndarray, min_pause_s: float = 0.15) -> tuple[Word, ...]:
    """Word times moved onto the sound. The alignment path steps from one token to the next about where the first
    ends, so a word's span from it runs from the end of the word before, pause included, and may hold that word's
    last sounds, or run on into the next word's. The sound is cut into stretches at pauses of `min_pause_s` or
    more; each word takes the stretch its span overlaps most (in order), and a word alone in its stretch takes
    the stretch's bounds; words that share one keep their spans, within it."""
    min_gap = max(1, round(min_pause_s * FRAMES_PER_SECOND))
    islands = _islands(voiced, min_gap)
    if not islands or not words:
        return tuple(words)
    spans = [(round(w.start * FRAMES_PER_SECOND), round(w.end * FRAMES_PER_SECOND)) for w in words]
    chosen: list[int] = []
    for lo, hi in spans:
        overlap = [min(hi, b) - max(lo, a) for a, b in islands]
        best = int(np.argmax(overlap))
        if overlap[best] <= 0:  # the span is in a pause: the nearest stretch
            best = int(np.argmin([max(a - hi, lo - b) for a, b in islands]))
        chosen.append(max(best, chosen[-1]) if chosen else best)
    out: list[Word] = []
    for i, (w, (lo, hi), k) in enumerate(zip(words, spans, chosen, strict=True)):
        a, b = islands[k]
        start = a if i == 0 or chosen[i - 1] != k else min(max(lo, a), b)
        end = b if i == len(words) - 1 or chosen[i + 1] != k else max(min(hi, b), a)
        start = max(start, round(out[-1].end * FRAMES_PER_SECOND)) if out else start
        end = max(end, start)
        out.append(Word(w.word, round(start / FRAMES_PER_SECOND, 3), round(end / FRAMES_PER_SECOND, 3), w.probability))
    return tuple(out)
