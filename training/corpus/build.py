"""`tympan data build`: the synthetic speech corpus, planned deterministically, synthesised resumably.

Plan (a pure function of the text items, the seed, the size and the engines):
- Sentences are held out: test and dev items are chosen first, by quotas per task and language,
  and a sentence (compared case- and punctuation-insensitively) is in one split only.
- Voices are held out by family (`voices.py`): dev and test are spoken only by voices whose
  speaker is never heard in training.
- Each training sentence gets one voice (short phrases and numbers: two or three), engines in
  the proportions of `mix`; speed and augmentation are drawn per utterance from the seed and
  the utterance id.
- One audio file serves several manifest lines: ASR, ST into each language the item has a
  translation for, and SQA for each of its questions.

Synthesis: each utterance's audio path is a hash of everything that makes its sound (engine,
voice, speed, augmentation, text), so an existing file is a finished job: a rerun skips it,
and an interrupted run resumes. Files are written under a temporary name and renamed. Dev and
test come first, then training in a shuffled order that interleaves the engines. The manifests
(`train.jsonl`, `dev.jsonl`, `test.jsonl`; `text.jsonl`: text-only MT and QA lines of every
training sentence, written once), `utterances.jsonl` (voice, speed and augmentation
of every utterance), `voices.json` and `recipe.json` are rewritten atomically as work
progresses and list only audio that exists, so training can start on a partial corpus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tympan.atomic import write_file
from tympan.errors import TympanError
from tympan.spoken import spoken_form
from tympan.training.corpus import augment
from tympan.training.corpus.text import normalise  # what makes two texts "the same sentence"
from tympan.training.corpus.voices import (
    ENGINES,
    SAMPLE_RATE,
    SPLITS,
    Engines,
    KokoroAssets,
    Voice,
    VoiceCatalogue,
    catalogue,
    check_engines,
    ensure_kokoro,
    render_params,
)

if TYPE_CHECKING:
    from tympan.training.corpus.items import TextItem

FORMAT = 1  # bump when the audio a spec produces changes, so cached files are not reused
SRC_LANG = "en"
# Share of training utterances per engine: Kokoro (the most human) as much as its speed
# allows, the fast CMU and formant engines for speaker and accent variety.
DEFAULT_MIX = {"kokoro": 0.35, "piper": 0.15, "flite": 0.20, "festival": 0.05, "espeak": 0.25}
# Held-out splits: engines that have held-out voices, Kokoro first as the closest to people.
HELD_OUT_MIX = {"kokoro": 0.6, "flite": 0.2, "espeak": 0.2}
KOKORO_BASE_SHARE = 0.4  # of Kokoro training utterances; the rest go to blends (new speakers)
MAX_WORDS = 60  # longer texts would run past the encoder's 30 s window
MAX_SECONDS = 30.0
# Manifests are rewritten every few hundred jobs, at most once a minute (a full corpus's take
# seconds to write), and at least every five minutes while work goes on.
FLUSH_JOBS = 300
FLUSH_MIN_SECONDS = 60.0
FLUSH_MAX_SECONDS = 300.0


class CorpusError(TympanError, ValueError):
    """The corpus cannot be planned or built as asked."""


@dataclass(frozen=True)
class SizeSpec:
    quotas: dict[str, dict[str, int]]  # split -> {"asr"|"st"|"sqa": minimum lines per language}
    train_all: bool  # train on every item not held out (else: train by its quota)
    kokoro_cap: int | None  # most Kokoro utterances per split (its model load and speed)
    min_per_engine: int  # training utterances every engine gets at least (small: all engines touched)
    multi_voice: float  # share of short or numeric training items spoken by 2-3 voices


SIZES = {
    "small": SizeSpec({"test": {"asr": 3, "st": 1, "sqa": 1}, "dev": {"asr": 2, "st": 1, "sqa": 1},
                       "train": {"asr": 10, "st": 2, "sqa": 2}}, train_all=False, kokoro_cap=1, min_per_engine=1,
                      multi_voice=1.0),
    "full": SizeSpec({"test": {"asr": 300, "st": 150, "sqa": 150}, "dev": {"asr": 100, "st": 50, "sqa": 50}},
                     train_all=True, kokoro_cap=None, min_per_engine=0, multi_voice=1.0),
}


@dataclass(frozen=True)
class Utterance:
    """One audio file: a text spoken by a voice, with its speed and augmentation."""

    id: str
    split: str
    item: TextItem
    voice: Voice
    render: dict[str, float]
    augment: dict[str, Any]
    audio: str  # path relative to the corpus directory

    @property
    def speech(self) -> str:
        """What the synthesizer is given: the text's spoken form (numbers as words), so every voice
        says the same words and the CTC stage's target is exactly what was said."""
        return spoken_form(self.item.text)

    def record(self, seconds: float) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, "item": self.item.id, "source": self.item.source,
                "voice": self.voice.id, "engine": self.voice.engine, "family": self.voice.family,
                "audio": self.audio, "seconds": round(seconds, 3), "render": self.render, "augment": self.augment}


@dataclass(frozen=True)
class Plan:
    utterances: tuple[Utterance, ...]  # in synthesis order: test, dev, then shuffled train
    catalogue: VoiceCatalogue
    skipped_long: int


@dataclass
class BuildResult:
    out: Path
    planned: int
    done: int
    failed: int
    interrupted: bool
    budget_reached: bool
    hours: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Planning


def _merge_duplicates(items: Sequence[TextItem]) -> list[TextItem]:
    """One item per sentence: duplicates give their translations and questions to the first."""
    from dataclasses import replace

    by_text: dict[str, TextItem] = {}
    for item in items:
        key = normalise(item.text)
        if not key:
            continue
        first = by_text.get(key)
        if first is None:
            by_text[key] = item
            continue
        translations = {**item.translations, **first.translations}
        qa = first.qa + tuple(q for q in item.qa if q not in first.qa)
        by_text[key] = replace(first, translations=translations, qa=qa)
    merged = list(by_text.values())
    ids = Counter(i.id for i in merged)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise CorpusError(f"text item id {dup[0]!r} names more than one text")
    return merged


def _lines_per_key(item: TextItem) -> Counter[str]:
    keys: Counter[str] = Counter({"asr": 1})
    for lang in item.translations:
        if lang != SRC_LANG:
            keys[f"st:{lang}"] += 1
    for qa in item.qa:
        keys[f"sqa:{qa.lang}"] += 1
    return keys


def _select(pool: list[TextItem], quota: dict[str, int], taken: set[str]) -> list[TextItem]:
    """Items until every task and language has its quota of lines, rarest keys filled first."""
    available: Counter[str] = Counter()
    for item in pool:
        if item.id not in taken:
            available.update(_lines_per_key(item).keys())
    wanted = {key: quota[key.split(":")[0]] for key in available}
    counts: Counter[str] = Counter()
    chosen: list[TextItem] = []
    for key in sorted(wanted, key=lambda k: (available[k], k)):
        for item in pool:
            if counts[key] >= wanted[key]:
                break
            if item.id in taken:
                continue
            keys = _lines_per_key(item)
            if key in keys:
                taken.add(item.id)
                chosen.append(item)
                counts.update(keys)
    return chosen


def _is_short_or_numeric(text: str) -> bool:
    """Commands, numbers said alone, short sentences with numbers: cheap, and the hardest to learn."""
    words = text.split()
    return len(words) <= 3 or (len(words) <= 12 and any(c.isdigit() for c in text))


def _largest_remainder(n: int, shares: dict[str, float]) -> dict[str, int]:
    total = sum(shares.values())
    exact = {e: n * s / total for e, s in shares.items()}
    alloc = {e: math.floor(x) for e, x in exact.items()}
    for e in sorted(shares, key=lambda e: (alloc[e] - exact[e], -shares[e], e))[: n - sum(alloc.values())]:
        alloc[e] += 1
    return alloc


def _engine_counts(n: int, shares: dict[str, float], cap: dict[str, int], least: int = 0) -> dict[str, int]:
    """Slots per engine in proportion to shares; a capped engine's excess is shared by the others.

    `least` slots go to every engine first (when n allows), the rest by share.
    """
    fixed: dict[str, int] = {}
    while True:
        free = {e: s for e, s in shares.items() if e not in fixed}
        m = n - sum(fixed.values())
        if not free or m <= 0:
            return {e: fixed.get(e, 0) for e in shares}
        base = {e: min(least, cap.get(e, m)) for e in free} if least * len(free) <= m else dict.fromkeys(free, 0)
        alloc = _largest_remainder(m - sum(base.values()), free)
        alloc = {e: alloc[e] + base[e] for e in free}
        over = [e for e in free if alloc[e] > cap.get(e, m)]
        if not over:
            return {e: fixed.get(e, alloc.get(e, 0)) for e in shares}
        for e in over:
            fixed[e] = cap[e]


def _mix_of(mix: dict[str, float] | None, engines: Sequence[str]) -> dict[str, float]:
    """The training mix over the selected engines, in a fixed order."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(ENGINES))
    if unknown:
        raise CorpusError(f"mix: unknown engine {unknown[0]!r} (engines: {', '.join(ENGINES)})")
    if any(not math.isfinite(s) or s < 0 for s in mix.values()):
        raise CorpusError(f"mix: shares must be finite and >= 0, got {mix}")
    return {e: mix[e] for e in ENGINES if e in engines and e in mix}


def _mix_for(split: str, cat: VoiceCatalogue, mix: dict[str, float]) -> dict[str, float]:
    base = mix if split == "train" else HELD_OUT_MIX
    shares = {e: s for e, s in base.items() if s > 0 and cat.by_engine(split, e)}
    if not shares:
        engines = sorted({v.engine for vs in cat.voices.values() for v in vs})
        raise CorpusError(f"no {split} voices among the engines {', '.join(engines)} "
                          f"(held-out voices exist for {', '.join(HELD_OUT_MIX)})")
    return shares


def _pick_voice(cat: VoiceCatalogue, split: str, engine: str, rng: random.Random, used: set[str]) -> Voice | None:
    voices = [v for v in cat.by_engine(split, engine) if v.id not in used]
    if engine == "kokoro" and split == "train":
        base = [v for v in voices if v.blend is None]
        blends = [v for v in voices if v.blend is not None]
        if base and blends:
            voices = base if rng.random() < KOKORO_BASE_SHARE else blends
    return rng.choice(voices) if voices else None


def _audio_path(voice: Voice, text: str, render: dict[str, float], aug: dict[str, Any]) -> str:
    spec = {"format": FORMAT, "rate": SAMPLE_RATE, "engine": voice.engine, "voice": voice.id, "render": render,
            "augment": aug, "text": text}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"audio/{voice.engine}/{key[:2]}/{key[:24]}.wav"


def plan_corpus(items: Sequence[TextItem], seed: int, size: str, engines: Sequence[str] = ENGINES,
                mix: dict[str, float] | None = None) -> Plan:
    if size not in SIZES:
        raise CorpusError(f"unknown size {size!r} (sizes: {', '.join(SIZES)})")
    spec = SIZES[size]
    mix = _mix_of(mix, engines)
    cat = catalogue(seed, engines)

    merged = _merge_duplicates(items)
    usable = [i for i in merged if len(i.text.split()) <= MAX_WORDS]
    skipped_long = len(merged) - len(usable)
    rng = random.Random(f"{seed}:items")
    pool = sorted(usable, key=lambda i: i.id)
    rng.shuffle(pool)

    taken: set[str] = set()
    by_split: dict[str, list[TextItem]] = {}
    for split in ("test", "dev"):
        by_split[split] = _select(pool, spec.quotas[split], taken)
    if spec.train_all:
        by_split["train"] = [i for i in pool if i.id not in taken]
    else:
        by_split["train"] = _select(pool, spec.quotas["train"], taken)

    utterances: dict[str, list[Utterance]] = {}
    for split in ("test", "dev", "train"):
        utterances[split] = _voice_split(by_split[split], split, cat, seed, spec, _mix_for(split, cat, mix))
    for split in ("test", "dev", "train"):
        random.Random(f"{seed}:order:{split}").shuffle(utterances[split])
    ordered = tuple(utterances["test"] + utterances["dev"] + utterances["train"])
    return Plan(ordered, cat, skipped_long)


def _voice_split(items: list[TextItem], split: str, cat: VoiceCatalogue, seed: int, spec: SizeSpec,
                 shares: dict[str, float]) -> list[Utterance]:
    rng = random.Random(f"{seed}:voices:{split}")
    cap = {"kokoro": spec.kokoro_cap} if spec.kokoro_cap is not None else {}
    counts = _engine_counts(len(items), shares, cap, spec.min_per_engine if split == "train" else 0)
    primary = [e for e in sorted(counts) for _ in range(counts[e])]
    rng.shuffle(primary)
    items = items[: len(primary)]  # only when every engine is capped (Kokoro alone, small size)
    out: list[Utterance] = []
    kokoro_used = counts.get("kokoro", 0)
    for item, engine in zip(items, primary, strict=True):
        n = 1
        if split == "train" and _is_short_or_numeric(item.text) and rng.random() < spec.multi_voice:
            n = rng.choice((2, 3))
        engines_for_item = [engine]
        others = [e for e in shares if e != engine]
        while len(engines_for_item) < n and others:
            if spec.kokoro_cap is not None and kokoro_used >= spec.kokoro_cap and "kokoro" in others:
                others.remove("kokoro")
                continue
            e = rng.choices(others, weights=[shares[o] for o in others])[0]
            others.remove(e)
            engines_for_item.append(e)
            kokoro_used += e == "kokoro"
        used: set[str] = set()
        for e in engines_for_item:
            voice = _pick_voice(cat, split, e, rng, used)
            if voice is None:
                continue
            used.add(voice.id)
            uid = f"{item.id}~{voice.id}"
            urng = random.Random(f"{seed}:{uid}")
            render = render_params(voice, urng)
            aug = augment.choose(urng)
            audio = _audio_path(voice, spoken_form(item.text), render, aug)
            out.append(Utterance(uid, split, item, voice, render, aug, audio))
    return out


def text_lines(items: Iterator[TextItem]) -> Iterator[dict[str, str]]:
    """Text-only examples (MT and text QA) of training sentences, synthesised or not: the LoRA
    stage learns translation and answering from them at no synthesis cost."""
    for item in items:
        for lang in sorted(item.translations):
            if lang != SRC_LANG:
                yield {"id": f"{item.id}/st-{lang}", "src_lang": SRC_LANG, "task": "st", "tgt_lang": lang,
                       "target": item.translations[lang], "text": item.text}
        for k, qa in enumerate(item.qa):
            yield {"id": f"{item.id}/sqa-{k}", "src_lang": SRC_LANG, "task": "sqa", "tgt_lang": qa.lang,
                   "question": qa.question, "target": qa.answer, "text": item.text}


def manifest_lines(u: Utterance) -> Iterator[dict[str, str]]:
    """The examples one utterance's audio serves."""
    base = {"audio": u.audio, "src_lang": SRC_LANG}
    yield {"id": f"{u.id}/asr", **base, "task": "asr", "tgt_lang": SRC_LANG, "target": u.item.text}
    for lang in sorted(u.item.translations):
        if lang != SRC_LANG:
            yield {"id": f"{u.id}/st-{lang}", **base, "task": "st", "tgt_lang": lang,
                   "target": u.item.translations[lang], "text": u.item.text}
    for k, qa in enumerate(u.item.qa):
        yield {"id": f"{u.id}/sqa-{k}", **base, "task": "sqa", "tgt_lang": qa.lang, "question": qa.question,
               "target": qa.answer, "text": u.item.text}


# ---------------------------------------------------------------------------------------------
# Files


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic write (temp + rename), skipped when the content is already there."""
    data = text.encode("utf-8")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_file(path, text)


def _jsonl(rows: Iterator[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


class Corpus:
    """The corpus directory: which utterances exist, and the files that list them."""

    def __init__(self, out: Path, plan: Plan, settings: dict[str, Any]) -> None:
        self.out = out
        self.plan = plan
        self.settings = settings  # what the plan is a function of: seed, size, engines, mix
        self.seconds: dict[str, float] = {}  # utterance id -> seconds, for audio that exists
        self.failed: dict[str, str] = {}
        self._text_written = False

    def scan(self) -> None:
        import soundfile as sf

        for stale in self.out.glob("audio/*/*/.*.tmp*"):
            stale.unlink(missing_ok=True)  # left by a killed worker
        for u in self.plan.utterances:
            path = self.out / u.audio
            if path.is_file():
                try:
                    self.seconds[u.id] = sf.info(str(path)).duration
                except RuntimeError:
                    path.unlink()  # unreadable: make it again

    def hours(self, split: str) -> float:
        return sum(self.seconds.get(u.id, 0.0) for u in self.plan.utterances if u.split == split) / 3600

    def listed(self, u: Utterance) -> bool:
        return u.id in self.seconds and self.seconds[u.id] <= MAX_SECONDS

    def write_text(self) -> None:
        """text.jsonl: written once per run (its content depends on the plan alone)."""
        if not self._text_written:
            train_items = {u.item.id: u.item for u in self.plan.utterances if u.split == "train"}
            _write_if_changed(self.out / "text.jsonl", _jsonl(text_lines(iter(train_items.values()))))
            self._text_written = True

    def write(self, complete: bool) -> None:
        for split in SPLITS:
            rows = (line for u in self.plan.utterances if u.split == split and self.listed(u)
                    for line in manifest_lines(u))
            _write_if_changed(self.out / f"{split}.jsonl", _jsonl(rows))
        self.write_text()
        records = (u.record(self.seconds[u.id]) for u in self.plan.utterances if self.listed(u))
        _write_if_changed(self.out / "utterances.jsonl", _jsonl(records))
        _write_if_changed(self.out / "voices.json", json.dumps(self.plan.catalogue.as_json(), indent=1) + "\n")
        _write_if_changed(self.out / "recipe.json", json.dumps(self.recipe(complete), indent=1, sort_keys=True) + "\n")

    def recipe(self, complete: bool) -> dict[str, Any]:
        planned: Counter[str] = Counter()
        done: Counter[str] = Counter()
        tasks: dict[str, Counter[str]] = defaultdict(Counter)
        engine_hours: dict[str, Counter[str]] = defaultdict(Counter)
        too_long = 0
        for u in self.plan.utterances:
            planned[u.split] += 1
            if u.id not in self.seconds:
                continue
            if not self.listed(u):
                too_long += 1
                continue
            done[u.split] += 1
            engine_hours[u.split][u.voice.engine] += self.seconds[u.id] / 3600
            for line in manifest_lines(u):
                key = line["task"] if line["task"] == "asr" else f"{line['task']}-{line['tgt_lang']}"
                tasks[u.split][key] += 1
        return {
            **self.settings,
            "complete": complete,
            "utterances_planned": dict(planned),
            "utterances": dict(done),
            "lines": {s: dict(sorted(c.items())) for s, c in tasks.items()},
            "hours": {s: round(self.hours(s), 3) for s in SPLITS},
            "hours_by_engine": {s: {e: round(h, 3) for e, h in sorted(c.items())} for s, c in engine_hours.items()},
            "skipped_long_texts": self.plan.skipped_long,
            "too_long_audio": too_long,
            "failed": len(self.failed),
        }


# ---------------------------------------------------------------------------------------------
# Synthesis (runs in worker processes, or in-process with one job)

_WORKER: Engines | None = None


def _init_worker(kokoro: KokoroAssets | None, threads: int, ignore_sigint: bool) -> None:
    global _WORKER
    if ignore_sigint:
        # Ctrl-C reaches the whole process group: the parent decides when to stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = Engines(kokoro, threads)


def _synthesize(voice: Voice, text: str, render: dict[str, float], aug: dict[str, Any], path: str) -> float:
    from tympan.audio import write_wav

    assert _WORKER is not None
    audio = augment.apply(_WORKER.synthesize(voice, text, render), SAMPLE_RATE, aug)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp{os.getpid()}.wav")
    write_wav(tmp, audio, SAMPLE_RATE)
    os.replace(tmp, dest)
    return len(audio) / SAMPLE_RATE


class _Stop:
    """SIGINT/SIGTERM ask the build to stop after the jobs in flight; a second one is immediate."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_corpus(out: Path, seed: int = 0, size: str = "small", jobs: int = 2, engines: Sequence[str] = ENGINES,
                 progress: bool = True, max_hours: float | None = None, mix: dict[str, float] | None = None,
                 items: Sequence[TextItem] | None = None) -> BuildResult:
    """Plan the corpus and synthesise what is missing; see the module docstring."""
    if jobs < 1:
        raise CorpusError(f"jobs must be >= 1, got {jobs}")
    if max_hours is not None and max_hours < 0:
        raise CorpusError(f"max hours must be >= 0, got {max_hours}")
    if not engines:
        raise CorpusError("no engines selected")
    bad = sorted(set(engines) - set(ENGINES))
    if bad:
        raise CorpusError(f"unknown engine {bad[0]!r} (engines: {', '.join(ENGINES)})")
    engines = [e for e in ENGINES if e in engines]  # the plan does not depend on the order given
    check_engines(engines)

    from tympan.config import tympan_home

    if items is None:
        from tympan.training.corpus.sources import ensure_sources
        from tympan.training.corpus.text import text_items

        items = text_items(ensure_sources(tympan_home() / "sources"), seed, size)
    mix = _mix_of(mix, engines)
    plan = plan_corpus(items, seed, size, engines, mix)
    out = Path(out)
    settings = {"seed": seed, "size": size, "engines": engines, "mix": mix}
    _check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _synthesise(out, plan, settings, jobs, progress, max_hours)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One build per directory at a time (a second would redo the first's jobs)."""
    with open(out / ".lock", "a") as lock:  # "a": taking the lock leaves the file (and its mtime) as it is
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CorpusError(f"another `tympan data build` is writing {out}") from None
        yield


def _synthesise(out: Path, plan: Plan, settings: dict[str, Any], jobs: int, progress: bool,
                max_hours: float | None) -> BuildResult:
    from tympan.config import tympan_home

    corpus = Corpus(out, plan, settings)
    corpus.scan()
    corpus.write_text()  # at once: the lora stage needs no audio

    train_hours = corpus.hours("train")
    pending = [u for u in plan.utterances if u.id not in corpus.seconds]
    kokoro = ensure_kokoro(tympan_home() / "sources" / "kokoro") if any(
        u.voice.engine == "kokoro" for u in pending) else None

    result = BuildResult(out, len(plan.utterances), len(corpus.seconds), 0, False, False)
    with _Stop() as stop:
        bar = _progress_bar(len(plan.utterances), len(corpus.seconds), progress)
        bar_hours = sum(corpus.seconds.values()) / 3600
        bar.set_postfix_str(f"{bar_hours:.2f} h")
        flushed_at, flushed_n = time.monotonic(), 0
        first_errors: dict[str, int] = Counter()
        successes: Counter[str] = Counter()

        def on_done(u: Utterance, seconds: float | None, error: BaseException | None) -> None:
            nonlocal bar_hours, train_hours, flushed_at, flushed_n
            if error is not None:
                corpus.failed[u.id] = f"{type(error).__name__}: {error}"
                if len(corpus.failed) <= 5:
                    bar.write(f"tympan data build: {u.voice.id}: {u.item.text[:60]!r}: {corpus.failed[u.id]}")
                if not successes[u.voice.engine]:
                    first_errors[u.voice.engine] += 1
                    if first_errors[u.voice.engine] >= 5:
                        raise CorpusError(f"engine {u.voice.engine} failed its first 5 utterances, "
                                          f"last: {corpus.failed[u.id]}")
            else:
                assert seconds is not None
                successes[u.voice.engine] += 1
                corpus.seconds[u.id] = seconds
                bar_hours += seconds / 3600
                if u.split == "train":
                    train_hours += seconds / 3600
            bar.update(1)
            bar.set_postfix_str(f"{bar_hours:.2f} h", refresh=False)
            flushed_n += 1
            since = time.monotonic() - flushed_at
            if (flushed_n >= FLUSH_JOBS and since >= FLUSH_MIN_SECONDS) or since >= FLUSH_MAX_SECONDS:
                corpus.write(complete=False)
                flushed_at, flushed_n = time.monotonic(), 0

        def budget_left(u: Utterance) -> bool:
            return u.split != "train" or max_hours is None or train_hours < max_hours

        threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        try:
            if jobs == 1 or len(pending) <= 1:
                result.budget_reached = _run_inline(pending, out, kokoro, threads, stop, on_done, budget_left)
            else:
                result.budget_reached = _run_pool(pending, out, kokoro, jobs, threads, stop, on_done, budget_left)
        finally:
            bar.close()
            result.interrupted = stop.requested
            complete = not stop.requested and not corpus.failed and len(corpus.seconds) == len(plan.utterances)
            corpus.write(complete=complete)
    result.done = len(corpus.seconds)
    result.failed = len(corpus.failed)
    result.hours = {s: corpus.hours(s) for s in SPLITS}
    return result


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """One corpus directory, one plan: other settings would mix two corpora's audio in it."""
    recipe = out / "recipe.json"
    if not recipe.is_file():
        return
    try:
        before = json.loads(recipe.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"{recipe}: unreadable ({e}); remove it or use another --out") from None
    for key, value in settings.items():
        if key in before and before[key] != value:
            raise CorpusError(f"{out} holds a corpus built with {key} {before[key]!r}, not {value!r}: "
                              f"use the same settings to resume, or another --out")


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    import sys

    from tqdm import tqdm

    # Into a log file (a background build), a line every half minute is enough.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=initial, unit="utt", disable=not enabled, dynamic_ncols=True,
                desc="synthesis", mininterval=interval, maxinterval=max(10.0, interval))


OnDone = Callable[[Utterance, float | None, BaseException | None], None]


def _run_inline(pending: list[Utterance], out: Path, kokoro: KokoroAssets | None, threads: int, stop: _Stop,
                on_done: OnDone, budget_left: Callable[[Utterance], bool]) -> bool:
    _init_worker(kokoro, threads, ignore_sigint=False)
    for u in pending:
        if stop.requested:
            return False
        if not budget_left(u):
            return True
        try:
            seconds = _synthesize(u.voice, u.speech, u.render, u.augment, str(out / u.audio))
        except Exception as e:  # one bad text must not end a long build; on_done stops a broken engine
            on_done(u, None, e)
        else:
            on_done(u, seconds, None)
    return False


def _run_pool(pending: list[Utterance], out: Path, kokoro: KokoroAssets | None, jobs: int, threads: int,
              stop: _Stop, on_done: OnDone, budget_left: Callable[[Utterance], bool]) -> bool:
    import multiprocessing

    # spawn: workers must not inherit the parent's threads (tqdm's monitor, onnxruntime pools).
    ctx = multiprocessing.get_context("spawn")
    in_flight: dict[Future[float], Utterance] = {}
    queue = iter(pending)
    budget_reached = False
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(kokoro, threads, True)) as pool:
        try:
            while True:
                while not stop.requested and not budget_reached and len(in_flight) < 2 * jobs:
                    u = next(queue, None)
                    if u is None:
                        break
                    if not budget_left(u):
                        budget_reached = True
                        break
                    fut = pool.submit(_synthesize, u.voice, u.speech, u.render, u.augment, str(out / u.audio))
                    in_flight[fut] = u
                if not in_flight:
                    break
                done, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    u = in_flight.pop(fut)
                    error = fut.exception()
                    if isinstance(error, BrokenExecutor):
                        raise CorpusError(f"a synthesis worker died ({error}); run the command again to resume")
                    if error is not None and not isinstance(error, Exception):
                        raise error
                    on_done(u, None if error else fut.result(), error)
        finally:
            for fut in in_flight:
                fut.cancel()
    return budget_reached
