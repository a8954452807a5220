"""End of turn: streams with pauses inside sentences and between them; the model fitted, simulated and measured.

    .venv/bin/python benchmarks/turns.py streams [--fit 160] [--test 60]    synthesize (cached, resumable)
    .venv/bin/python benchmarks/turns.py fit [--out tympan/runtime/turn_model.json] [--json OUT]
    .venv/bin/python benchmarks/turns.py simulate [--json OUT]             presets on the test streams, offline
    .venv/bin/python benchmarks/turns.py measure [--turns silence,balanced] [--json OUT]   through `tympan serve`

**Streams.** Sentences of five kinds: numbers read in groups ("my number is six two ... four one eight"), lists
("I need eggs, ... milk and bread"), appointments, English lines of the corpus (`$TYMPAN_HOME/data/default`), and
short commands said in one go ("Turn on the kitchen lights.").
Each is cut into 1-3 pieces at a comma, after a word that cannot end a sentence ("to", "the", "and": a
hesitation), inside a number group, or at a random word; the sentence is synthesized whole with a comma at each
cut (so the voice carries on there, with the prosody of a pause inside a sentence), and the quiet stretches the
voice left at the commas are stretched to 0.3-1.0 s of silence (pauses inside a sentence). Sentences follow
each other after 0.9-1.8 s (ends of turn). Fitting streams use training voices, test streams the held-out
test voices (voices.py's splits) and end with the project's real recordings (`real_utterances`, whole, as
single-sentence turns). Cached under `$TYMPAN_HOME/turns/` (one file a stream; a run resumes where it stopped).

**Fit** (offline, no daemon): the segmenter (vad.py, the daemon's settings) runs over each fitting stream; at
each of its pauses the default bundle reads the audio so far (first pass, then Whisper: the speculative final),
and the pause is labelled a sentence end or not from where the stream's pieces are. A row per pause and silence
length (every 30 ms from the read's arrival up to the pause's real length): the features of runtime/turn.py,
label 1 for a sentence end. Logistic regression; the feature sets compared (text alone, + prosody, + pause) by
log-loss and by premature ends at the balanced preset's settings.

**Simulate**: the same rows on the test streams: each preset's decision time at each pause (the first moment its
threshold and minimum silence are met, the reading being there, or its maximum silence), giving premature ends of
turn (of pauses inside sentences), merged turns (sentence ends that did not end a turn) and the end of speech ->
decision time, against the silence endpoint.

**Measure**: `tympan serve` (default bundle, 2 threads) and the test streams at real-time pace, one session at a
time per turn setting; a final whose end is a sentence end is a turn, one inside a sentence premature, and a
sentence end no final ended at merged. End of speech -> final is measured at the client (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from common import RATE, BenchmarkError, Listener, cpu_model, quantile, real_utterances, run_main, stream

from tympan.atomic import write_json
from tympan.config import tympan_home

ROOT = Path(__file__).resolve().parent.parent
INSIDE_S = (0.3, 1.0)  # pauses inside a sentence
BETWEEN_S = (0.9, 1.8)  # between sentences
STEP_S = 0.03  # the decision's clock in the simulation (a frame)
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ITEMS = ("eggs", "milk", "bread", "butter", "apples", "rice", "coffee", "cheese", "onions", "tomatoes", "tea",
         "a new battery", "two tickets", "the blue folder", "some paper towels", "the charger")
PLACES = ("the office", "the station", "the dentist", "my sister's house", "the library", "the airport")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS = ("nine", "ten", "eleven", "two", "three", "four", "half past five", "a quarter to six")


# --- sentences and where they pause -----------------------------------------------------------------------


def _digits(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(n))


def number_sentence(rng: random.Random) -> list[str]:
    lead = rng.choice(("My number is", "The code is", "Call me at", "The account number is", "It's extension",
                       "The reference is"))
    groups = [_digits(rng, rng.randint(2, 4)) for _ in range(rng.randint(2, 3))]
    cut = rng.randint(1, len(groups) - 1)
    first, rest = " ".join(groups[:cut]), " ".join(groups[cut:])
    if rng.random() < 0.3:  # a pause before the number too
        return [lead, first, rest + "."]
    return [f"{lead} {first}", rest + "."]


def list_sentence(rng: random.Random) -> list[str]:
    items = rng.sample(ITEMS, rng.randint(3, 4))
    lead = rng.choice(("I need", "Please buy", "Can you bring", "We are out of", "Don't forget"))
    end = "?" if lead == "Can you bring" else "."
    pieces = [f"{lead} {items[0]}", *items[1:-1], f"and {items[-1]}{end}"]
    if rng.random() < 0.5:  # not every comma is a pause
        k = rng.randrange(1, len(pieces) - 1)
        pieces[k - 1:k + 1] = [f"{pieces[k - 1]}, {pieces[k]}"]
    return pieces


def appointment_sentence(rng: random.Random) -> list[str]:
    place, day, hour = rng.choice(PLACES), rng.choice(DAYS), rng.choice(HOURS)
    forms = ([f"I have to go to {place} on", f"{day} at {hour}."],
             [f"Let's meet at {place}", f"on {day}."],
             ["Can we move it to", f"{day} at {hour}?"],
             [f"The train leaves at {hour}", "from platform", f"{rng.randint(2, 9)}."])
    return list(rng.choice(forms))


COMMANDS = ("Turn on the kitchen lights.", "What time is it?", "Stop.", "Yes, please.", "No.",
            "Set a timer for ten minutes.", "Play some jazz.", "Call mom.", "What's the weather like tomorrow?",
            "Cancel that.", "Thank you.", "Turn it down.", "Open the garage door.", "Is it going to rain?",
            "Next song.", "Remind me at five.", "That's all.", "Sounds good.", "Read my messages.",
            "Lock the front door.")


def prose_sentence(rng: random.Random, line: str) -> list[str]:
    """A corpus line cut at a comma, after a word that continues, or at a random word (1-2 cuts)."""
    from tympan.runtime.turn import CONTINUING

    words = line.split()
    candidates = [i for i in range(2, len(words) - 1) if words[i - 1].endswith(",")
                  or words[i - 1].lower().strip(",;:") in CONTINUING]
    cuts = set(rng.sample(candidates, min(len(candidates), rng.randint(1, 2)))) if candidates else set()
    if not cuts or rng.random() < 0.25:
        cuts.add(rng.randrange(2, len(words) - 1))
    pieces, last = [], 0
    for c in sorted(cuts):
        pieces.append(" ".join(words[last:c]))
        last = c
    pieces.append(" ".join(words[last:]))
    return pieces


def corpus_lines(limit: int, rng: random.Random) -> list[str]:
    """English lines of the corpus, 6-18 words, ending a sentence."""
    path = tympan_home() / "data" / "default" / "text.jsonl"
    if not path.is_file():
        raise BenchmarkError(f"{path}: no corpus text (build the default data set first)")
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for raw in f:
            text = json.loads(raw).get("text", "")
            if (isinstance(text, str) and 6 <= len(text.split()) <= 18 and text[-1:] in ".?!"
                    and re.fullmatch(r"[A-Za-z0-9 ,.'?!-]+", text) and ". " not in text):  # one sentence each
                seen.add(text)
    lines = sorted(seen)
    rng.shuffle(lines)
    return lines[:limit]


def sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    prose = corpus_lines(n, rng)
    out: list[list[str]] = []
    for i in range(n):
        kind = i % 5
        if kind == 4:  # a short command said in one go: a whole turn in a few words
            out.append([rng.choice(COMMANDS)])
        elif kind == 0:
            out.append(number_sentence(rng))
        elif kind == 1:
            out.append(list_sentence(rng))
        elif kind == 2:
            out.append(appointment_sentence(rng))
        else:
            out.append(prose_sentence(rng, prose[i % len(prose)]))
    return out


# --- streams ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    start: float  # stream seconds: the end of the speech before it
    end: float  # the start of the speech after it (the stream's end for the last)
    sentence_end: bool


def trim(audio: np.ndarray, keep_s: float = 0.02) -> np.ndarray:
    """The synthesized piece without its leading and trailing silence (40 dB under its peak)."""
    frame = RATE // 100
    n = len(audio) // frame
    if n == 0:
        return audio
    energy = (audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 1e-4)
    if not len(loud):
        return audio[:0]
    keep = int(keep_s * RATE)
    return audio[max(0, loud[0] * frame - keep): min(len(audio), (loud[-1] + 1) * frame + keep)]


def gaps(audio: np.ndarray, count: int, min_s: float = 0.04) -> list[tuple[int, int]]:
    """The `count` longest quiet stretches (35 dB under the peak, at least `min_s`) inside the audio, as sample
    ranges: where a voice paused at a comma."""
    frame = RATE // 100
    n = len(audio) // frame
    if count <= 0 or n < 3:
        return []
    energy = (audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    quiet = energy < energy.max() * 10 ** (-3.5)
    runs, start = [], None
    for i, q in enumerate(quiet):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if start > 0 and i - start >= min_s * 100:
                runs.append((start, i))
            start = None
    runs.sort(key=lambda r: r[1] - r[0], reverse=True)
    return [(a * frame, b * frame) for a, b in runs[:count]]


def stream_path(split: str, index: int) -> Path:
    return tympan_home() / "turns" / split / f"stream-{index:03d}.npz"


def synthesize_streams(split: str, count: int, per_stream: int, seed: int) -> None:
    """`count` streams of `per_stream` sentences each in `split`'s voices; existing ones are kept."""
    from tympan.training.corpus.voices import Engines, catalogue, ensure_kokoro, render_params

    voices = [v for v in catalogue(seed).voices["train" if split == "fit" else "test"]
              if v.engine in ("kokoro", "piper", "espeak", "flite")]
    engines = Engines(ensure_kokoro(tympan_home() / "sources" / "kokoro"), threads=1)
    all_sentences = sentences(count * per_stream, seed + (0 if split == "fit" else 1000))
    for k in range(count):
        path = stream_path(split, k)
        if path.exists():
            continue
        rng = random.Random(seed * 7919 + k + (0 if split == "fit" else 100_000))
        engine = rng.choice(sorted({v.engine for v in voices}))  # espeak has many more voices than the rest
        voice = rng.choice([v for v in voices if v.engine == engine])
        render = render_params(voice, rng)
        parts: list[np.ndarray] = [np.zeros(int(0.5 * RATE), np.float32)]
        pauses: list[Pause] = []
        texts: list[str] = []
        t = 0.5
        for pieces in all_sentences[k * per_stream:(k + 1) * per_stream]:
            # The sentence is said whole, a comma where each piece ends (the voice carries on there, as people's
            # does before a pause inside a sentence); those pauses are then stretched.
            spoken = ", ".join(p.rstrip(",") for p in pieces)
            texts.append(spoken)
            audio = trim(engines.synthesize(voice, spoken, render)).astype(np.float32)
            last = 0
            for a, b in sorted(gaps(audio, len(pieces) - 1)):
                gap = max(rng.uniform(*INSIDE_S), (b - a) / RATE)
                parts += [audio[last:a], np.zeros(int(gap * RATE), np.float32)]
                t += (a - last) / RATE
                pauses.append(Pause(t, t + int(gap * RATE) / RATE, False))
                t += int(gap * RATE) / RATE
                last = b
            gap = rng.uniform(*BETWEEN_S)
            parts += [audio[last:], np.zeros(int(gap * RATE), np.float32)]
            t += (len(audio) - last) / RATE
            pauses.append(Pause(t, t + int(gap * RATE) / RATE, True))
            t += int(gap * RATE) / RATE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, audio=np.concatenate(parts), pauses=json.dumps([asdict(p) for p in pauses]),
                 voice=voice.id, texts=json.dumps(texts))
        os.replace(tmp, path)
        print(f"{split} stream {k + 1}/{count}: {voice.id}, {t:.0f} s", flush=True)


@dataclass(frozen=True)
class Stream:
    id: str
    audio: np.ndarray
    pauses: list[Pause]
    voice: str


def load_streams(split: str) -> list[Stream]:
    files = sorted((tympan_home() / "turns" / split).glob("stream-*.npz"))
    if not files:
        raise BenchmarkError(f"no {split} streams under {tympan_home() / 'turns'}: run `turns.py streams` first")
    out = []
    for f in files:
        with np.load(f) as z:
            out.append(Stream(f"{split}/{f.stem}", z["audio"], [Pause(**p) for p in json.loads(str(z["pauses"]))],
                              str(z["voice"])))
    return out


def real_stream(seed: int) -> Stream:
    """The real recordings, each a whole turn, joined by the between-sentence pauses."""
    rng = random.Random(seed)
    parts: list[np.ndarray] = [np.zeros(int(0.5 * RATE), np.float32)]
    pauses: list[Pause] = []
    t = 0.5
    for u in real_utterances():
        audio = trim(u.audio)
        gap = int(rng.uniform(*BETWEEN_S) * RATE) / RATE
        parts += [audio, np.zeros(int(gap * RATE), np.float32)]
        t += len(audio) / RATE
        pauses.append(Pause(t, t + gap, True))
        t += gap
    return Stream("real", np.concatenate(parts), pauses, "human")


# --- rows: the model's inputs at each pause ----------------------------------------------------------------


@dataclass(frozen=True)
class PauseRow:
    stream: str
    speech_end: float  # the segmenter's
    length: float  # the silence's real length (to the next speech)
    sentence_end: bool
    text: str
    read_ms: float  # how long the speculative reading took
    prosody: tuple[float, float, float, float]


def label(pauses: list[Pause], speech_end: float) -> tuple[bool, float] | None:
    """(is it a sentence end, the silence's real length) of a segmenter pause, from the stream's pauses; None for a
    pause the stream does not know (a gap inside a piece: not a sentence end, its length is short)."""
    for p in pauses:
        # The segmenter's end of speech may be a frame or two off the trimmed piece's end.
        if p.start - 0.12 <= speech_end <= p.start + 0.12:
            return p.sentence_end, p.end - speech_end
    return None


def collect(streams: list[Stream], cache: Path) -> list[PauseRow]:
    """Every segmenter pause of the streams, read as the daemon reads a speculative final (cached per stream)."""
    from tympan.daemon.settings import DaemonConfig
    from tympan.daemon.turn import PRESETS
    from tympan.daemon.vad import Segmenter, SpeechPaused, SpeechResumed
    from tympan.runtime.bundle import default_bundle
    from tympan.runtime.speech_model import SpeechModel

    cache.mkdir(parents=True, exist_ok=True)
    model: SpeechModel | None = None
    rows: list[PauseRow] = []
    for s in streams:
        path = cache / (s.id.replace("/", "-") + ".json")
        if path.exists():
            rows += [PauseRow(**{**r, "prosody": tuple(r["prosody"])}) for r in json.loads(path.read_text())]
            continue
        if model is None:
            model = SpeechModel.load(default_bundle(), threads=2)
        # As a session segments (its silence endpoint only a last resort), the turn ending at each sentence end: the
        # readings are those of a turn-taker that is always right.
        vad = DaemonConfig().vad
        seg = Segmenter(replace(vad, silence_ms=max(p.max_silence_ms for p in PRESETS.values())), RATE)
        found: list[PauseRow] = []
        pending: SpeechPaused | None = None
        chunk = RATE // 50
        for i in range(0, len(s.audio), chunk):
            for ev in seg.push(s.audio[i:i + chunk]):
                if isinstance(ev, SpeechPaused):
                    pending = ev
                    known = label(s.pauses, ev.speech_end)
                    if known is None:
                        continue  # measured below, when speech resumes
                    found.append(_row(model, s, ev, *known))
                    if known[0]:
                        seg.end_turn()
                        pending = None
                elif isinstance(ev, SpeechResumed) and pending is not None:
                    if label(s.pauses, pending.speech_end) is None:
                        found.append(_row(model, s, pending, False, (i + chunk) / RATE - pending.speech_end))
                    pending = None
        path.write_text(json.dumps([asdict(r) for r in found]))
        rows += found
        print(f"{s.id}: {len(found)} pauses", flush=True)
    return rows


def _row(model: object, s: Stream, ev: object, sentence_end: bool, length: float) -> PauseRow:
    from tympan.daemon.vad import SpeechPaused
    from tympan.runtime.speech_model import SpeechModel

    assert isinstance(model, SpeechModel) and isinstance(ev, SpeechPaused)
    t0 = time.perf_counter()
    encoded = model.encode([ev.audio])[0]
    heard = model.read(ev.audio, encoded)
    read_ms = (time.perf_counter() - t0) * 1000
    text = heard.text if heard.refused is None else ""
    p = ev.prosody
    return PauseRow(s.id, ev.speech_end, length, sentence_end, text, read_ms,
                    (p.pitch_slope, p.pitch_final, p.energy_final, p.final_voiced_ms))


def design(rows: list[PauseRow], pause_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """A row per pause and silence length: from the reading's arrival, every STEP_S, while the silence lasts."""
    from tympan.runtime.turn import Prosody, features

    x, y = [], []
    for r in rows:
        t = pause_ms / 1000 + r.read_ms / 1000
        while t < min(r.length, 2.0):
            x.append(features(r.text, Prosody(*r.prosody), t))
            y.append(float(r.sentence_end))
            t += STEP_S * 3
    return np.array(x), np.array(y)


FEATURE_SETS = {
    "text": ("bias", "ends_sentence", "ends_clause", "continuing_word"),
    "text + pause": ("bias", "ends_sentence", "ends_clause", "continuing_word", "pause"),
    "prosody + pause": ("bias", "pitch_slope", "pitch_final", "energy_final", "final_voiced", "pause"),
    "text + prosody + pause": None,  # all of them
}


def fit_sets(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> dict[str, dict[str, object]]:
    from tympan.runtime.turn import FEATURES, fit

    out: dict[str, dict[str, object]] = {}
    for name, chosen in FEATURE_SETS.items():
        mask = np.array([chosen is None or f in chosen for f in FEATURES])
        model = fit(np.where(mask, x, 0.0), y)
        w = np.array(model.weights) * mask
        p = 1 / (1 + np.exp(-np.clip(xt @ w, -40, 40)))
        eps = 1e-9
        loss = float(-np.mean(yt * np.log(p + eps) + (1 - yt) * np.log(1 - p + eps)))
        out[name] = {"weights": [round(float(v), 4) for v in w], "test_log_loss": round(loss, 4),
                     "test_auc": round(auc(p, yt), 4)}
    return out


def auc(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return math.nan
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --- simulation -------------------------------------------------------------------------------------------


def decision_s(r: PauseRow, turn: str, model: object, pause_ms: int, silence_ms: int) -> float:
    """When the turn setting ends the turn at this pause (seconds of silence), inf if it never does."""
    from tympan.daemon.turn import Turn
    from tympan.runtime.turn import Prosody, TurnModel

    assert isinstance(model, TurnModel)
    decider = Turn(turn, False, model, silence_ms)
    decider.paused(0.0, Prosody(*r.prosody))
    ready = pause_ms / 1000 + r.read_ms / 1000
    t = pause_ms / 1000
    while t <= 5.0:
        if t >= ready and decider.text is None:
            decider.heard(r.text)
        d = decider.decide(t)
        if d is not None and d[0] == "end":
            return max(t, ready) if d[1] is not None else t
        t += STEP_S
    return math.inf


def simulate(rows: list[PauseRow], turns: list[str], pause_ms: int, silence_ms: int) -> list[dict[str, object]]:
    from tympan.runtime.turn import TurnModel

    model = TurnModel.load()
    out = []
    inside = [r for r in rows if not r.sentence_end]
    ends = [r for r in rows if r.sentence_end]
    for turn in turns:
        premature = sum(decision_s(r, turn, model, pause_ms, silence_ms) < r.length for r in inside)
        times = [decision_s(r, turn, model, pause_ms, silence_ms) for r in ends]
        merged = sum(t >= r.length for t, r in zip(times, ends, strict=True))
        ended = [t * 1000 for t, r in zip(times, ends, strict=True) if t < r.length]
        out.append({"turn": turn, "pauses_inside": len(inside), "premature": premature,
                    "premature_pct": round(100 * premature / max(1, len(inside)), 1), "sentence_ends": len(ends),
                    "merged": merged, "merged_pct": round(100 * merged / max(1, len(ends)), 1),
                    "decision_p50_ms": round(statistics.median(ended)) if ended else None,
                    "decision_p95_ms": round(quantile(ended, 0.95)) if ended else None})
    return out


# --- the daemon -------------------------------------------------------------------------------------------


def measure(streams: list[Stream], turns: list[str], threads: int) -> list[dict[str, object]]:
    from daemon_harness import DaemonProcess

    from tympan.daemon.cli import default_bundle

    bundle = default_bundle()
    work = Path(tempfile.mkdtemp(prefix="tympan-bench-turns-"))
    daemon = DaemonProcess(bundle, work, f"[server]\nthreads = {threads}\n").start()
    out = []
    try:
        for turn in turns:
            finals: list[tuple[str, float, float, str]] = []  # stream, end, latency s, text
            for s in streams:
                listener = Listener()
                asyncio.run(stream(daemon.url, [s.audio], listener, chunk_ms=20, request={"turn": turn}))
                if listener.errors:
                    raise BenchmarkError(f"{turn} {s.id}: {listener.errors[0]}")
                finals += [(s.id, f.end, f.latency_s, f.text) for f in listener.finals]
            out.append(score(streams, finals, turn))
            print(json.dumps(out[-1]), flush=True)
    finally:
        daemon.stop()
    return out


def score(streams: list[Stream], finals: list[tuple[str, float, float, str]], turn: str) -> dict[str, object]:
    latencies, premature, inside, ends, ended = [], 0, 0, 0, 0
    by_stream: dict[str, list[tuple[float, float]]] = {}
    for sid, end, lat, _ in finals:
        by_stream.setdefault(sid, []).append((end, lat))
    for s in streams:
        got = by_stream.get(s.id, [])
        for p in s.pauses:
            hit = [lat for end, lat in got if p.start - 0.15 <= end <= p.start + 0.15]
            if p.sentence_end:
                ends += 1
                if hit:
                    ended += 1
                    latencies.append(hit[0] * 1000)
            else:
                inside += 1
                premature += bool(hit)
    return {"turn": turn, "finals": len(finals), "sentence_ends": ends, "turns_ended": ended,
            "merged_pct": round(100 * (ends - ended) / max(1, ends), 1), "pauses_inside": inside,
            "premature": premature, "premature_pct": round(100 * premature / max(1, inside), 1),
            "p50_ms": round(statistics.median(latencies)) if latencies else None,
            "p95_ms": round(quantile(latencies, 0.95)) if latencies else None}


# --- the commands -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("streams", "fit", "simulate", "measure"))
    parser.add_argument("--fit", type=int, default=70, help="fitting streams (4 sentences each)")
    parser.add_argument("--test", type=int, default=15, help="test streams (4 sentences each)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "tympan" / "runtime" / "turn_model.json")
    parser.add_argument("--turns", default="silence,aggressive,balanced,conservative")
    parser.add_argument("--no-real", action="store_true", help="leave the real recordings out of the test streams")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tympan.daemon.settings import DaemonConfig

    vad = DaemonConfig().vad
    cache = tympan_home() / "turns" / "rows"
    result: dict[str, object] = {"cpu": cpu_model(), "cores": os.cpu_count(), "pause_ms": vad.pause_ms}
    if args.command == "streams":
        synthesize_streams("fit", args.fit, 4, args.seed)
        synthesize_streams("test", args.test, 4, args.seed)
        return 0
    test_streams = load_streams("test") + ([] if args.no_real else [real_stream(args.seed)])
    if args.command == "measure":
        result["rows"] = measure(test_streams, args.turns.split(","), args.threads)
    else:
        test_rows = collect(test_streams, cache)
        if args.command == "fit":
            from tympan.runtime.turn import FEATURES

            rows = collect(load_streams("fit"), cache)
            x, y = design(rows, vad.pause_ms)
            xt, yt = design(test_rows, vad.pause_ms)
            sets = fit_sets(x, y, xt, yt)
            chosen = sets["text + prosody + pause"]
            write_json(args.out, {"features": list(FEATURES), "weights": chosen["weights"],
                                  "fitted_on": f"{len(rows)} pauses ({sum(r.sentence_end for r in rows)} sentence "
                                               f"ends) of {args.fit} synthesized streams (benchmarks/turns.py)",
                                  "test": {k: {"log_loss": v["test_log_loss"], "auc": v["test_auc"]}
                                           for k, v in sets.items()}})
            result["sets"] = sets
            result["fit_rows"], result["test_rows"] = len(y), len(yt)
            print(json.dumps(sets, indent=1))
        result["simulation"] = simulate(test_rows, args.turns.split(","), vad.pause_ms, vad.silence_ms)
        result["read_ms_p50"] = round(statistics.median(r.read_ms for r in test_rows))
        for row in result["simulation"]:  # type: ignore[attr-defined]
            print(row)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_main(main)
