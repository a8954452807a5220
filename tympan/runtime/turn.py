"""End of turn: how likely a pause is the end of what the speaker meant to say, from what was said and how.

At a pause, three things are known: the words read so far (the speculative final, punctuated by Whisper), the
prosody of the speech before the pause (the segmenter's per-frame pitch and energy) and how long the silence has
lasted. `TurnModel` turns them into a probability with a logistic regression whose weights ship with the package
(`turn_model.json`, fitted by `benchmarks/turns.py fit` on synthesized streams with pauses inside sentences and
between them; the fit, its data and its scores are in docs/turns.md). It costs microseconds a pause.

The text features carry most of the weight: a sentence-final mark, or a last word that cannot end a thought ("and",
"the", "is", "my", a number in a list). Prosody: the pitch's slope over the last voiced 400 ms (a statement
falls), the last pitch against the utterance's median, the energy of the last syllable against the rest, and the
length of the last voiced stretch (final lengthening).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from tympan.errors import TympanError

MODEL_FILE = "turn_model.json"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words after which an English sentence almost never ends: articles, prepositions, conjunctions, possessives,
# auxiliaries and subject pronouns, and hesitations.
CONTINUING = _words("""
a an the this that these those my your his her its our their some any every each no
and or but nor so because if when while although though since unless until than as whether
to of in on at for with from by about into onto over under between through after before during without
is are was were be been being am do does did have has had will would can could should shall may might must
i you he she we they it's i'm you're we're they're there's let's
um uh er erm like which who whose whom what where very really just also not
""")

_WORD = re.compile(r"[\w'’-]+", re.UNICODE)
FEATURES = ("bias", "ends_sentence", "ends_clause", "continuing_word", "pitch_slope", "pitch_final", "energy_final",
            "final_voiced", "pause")


class TurnModelError(TympanError, ValueError):
    """The end-of-turn model's file is missing or wrong."""


@dataclass(frozen=True)
class Prosody:
    """How the speech before a pause ended (segmenter frames): see `prosody`."""

    pitch_slope: float = 0.0  # semitones per second over the last voiced 400 ms (negative: falling)
    pitch_final: float = 0.0  # the last voiced frames' pitch against the utterance's median, semitones
    energy_final: float = 0.0  # the last 90 ms of speech against the median of the speech, dB
    final_voiced_ms: float = 0.0  # the last stretch of consecutive voiced frames


FLAT = Prosody()  # nothing known of how the speech ended


def prosody(db: np.ndarray, lag: np.ndarray, voiced: np.ndarray, active: np.ndarray, frame_ms: int,
            sample_rate: int) -> Prosody:
    """The prosody of an utterance's frames up to its last active one (energy dB, pitch lag in samples, voiced and
    active flags per frame)."""
    act = np.flatnonzero(active)
    if not len(act):
        return Prosody()
    end = int(act[-1]) + 1
    db, lag, voiced, active = db[:end], lag[:end], voiced[:end], active[:end]
    energy_final = float(np.mean(db[-max(1, 90 // frame_ms):]) - np.median(db[active]))
    run = 0
    for v in voiced[::-1]:
        if not v:
            if run:
                break
            continue
        run += 1
    v_idx = np.flatnonzero(voiced & (lag > 0))
    if len(v_idx) < 3:
        return Prosody(0.0, 0.0, energy_final, run * frame_ms)
    semitones = 12.0 * np.log2(sample_rate / lag[v_idx].astype(np.float64))
    last = v_idx >= end - 400 // frame_ms
    slope = 0.0
    if last.sum() >= 3:
        t = v_idx[last] * frame_ms / 1000.0
        slope = float(np.polyfit(t, semitones[last], 1)[0])
    final = float(np.mean(semitones[-3:]) - np.median(semitones))
    return Prosody(float(np.clip(slope, -60, 60)), float(np.clip(final, -12, 12)), energy_final, run * frame_ms)


def text_features(text: str) -> tuple[float, float, float]:
    """(ends with . ? !, ends with , ; : or a dash or an ellipsis, the last word is one that continues) of the heard
    text."""
    t = text.strip()
    words = _WORD.findall(t.lower())
    ellipsis = t.endswith(("...", "…"))
    ends_sentence = float(bool(t) and t[-1] in ".?!。？！" and not ellipsis)
    ends_clause = float(bool(t) and (t[-1] in ",;:-–—，；" or ellipsis))
    last = words[-1].replace("’", "'") if words else ""
    return ends_sentence, ends_clause, float(last in CONTINUING)


def features(text: str, prosody: Prosody, pause_s: float) -> np.ndarray:
    """The model's inputs, scaled to about unit range, in FEATURES order."""
    return np.array([1.0, *text_features(text), prosody.pitch_slope / 10.0, prosody.pitch_final / 5.0,
                     prosody.energy_final / 10.0, prosody.final_voiced_ms / 200.0, pause_s], np.float64)


@dataclass(frozen=True)
class TurnModel:
    """A logistic regression over `features`."""

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES) or not all(math.isfinite(w) for w in self.weights):
            raise TurnModelError(f"an end-of-turn model has {len(FEATURES)} finite weights ({', '.join(FEATURES)}), "
                                 f"got {list(self.weights)}")

    def probability(self, text: str, prosody: Prosody, pause_s: float) -> float:
        z = float(np.dot(self.weights, features(text, prosody, pause_s)))
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))

    @classmethod
    def load(cls, path: Path | None = None) -> TurnModel:
        """The model in `path`, or the one shipped with the package."""
        try:
            if path is None:
                raw = resources.files("tympan.runtime").joinpath(MODEL_FILE).read_text(encoding="utf-8")
            else:
                raw = Path(path).read_text(encoding="utf-8")
            data = json.loads(raw)
        except (OSError, json.JSONDecodeError) as e:
            raise TurnModelError(f"end-of-turn model {path or MODEL_FILE}: cannot read it: {e}") from None
        if not isinstance(data, dict) or data.get("features") != list(FEATURES):
            raise TurnModelError(f"end-of-turn model {path or MODEL_FILE}: its 'features' must be {list(FEATURES)}")
        weights = data.get("weights")
        if not isinstance(weights, list) or not all(isinstance(w, (int, float)) for w in weights):
            raise TurnModelError(f"end-of-turn model {path or MODEL_FILE}: 'weights' must be a list of numbers")
        return cls(tuple(float(w) for w in weights))


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 50) -> TurnModel:
    """A logistic regression by Newton's method (rows of `features`, labels 1 = the turn ended); the bias is not
    penalised."""
    if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) != len(y) or not len(y):
        raise ValueError(f"fit needs rows of {len(FEATURES)} features and as many labels, got {x.shape} and {y.shape}")
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2 * len(y))
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -40, 40)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return TurnModel(tuple(float(v) for v in w))
