"""What a CTC bridge heard, read with a token n-gram language model: CTC prefix beam search with shallow fusion.

Greedy CTC takes each frame's best label on its own, so a word the head half-hears comes out spelt by
sound ("seven of clocks"). The beam keeps the few best label sequences and scores each by its CTC
probability plus `weight` x the log-probability an n-gram model of the training text gives its
tokens, plus `length_bonus` per token (the LM alone would favour dropping words). Measured on the
held-out test sentences (docs/training.md): WER 30.0 -> 23-24 % for `ctc6`'s head.

The model is over the LLM's own token ids, so it does not depend on the head's class order. It is
kept in backoff form (log p of each seen n-gram, log backoff weight of each seen context), packed
for lookup without a Python dict: an n-gram's ids, 20 bits each, make one int64 key, and each order
is a sorted key array searched with numpy. Written by `tympan.training.ngram`.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tympan.errors import TympanError

BITS = 20
BOS = (1 << BITS) - 1  # sentence start: context only
EOS = (1 << BITS) - 2  # sentence end: scored once the utterance ends
MAX_ORDER = 3  # 3 x 20 bits in an int64 key
NEG = -1e30
LM_FILE = "lm.npz"  # beside a checkpoint's weights, and in a bundle
TOP_LABELS = 16  # labels per CTC frame the encoder graph gives the beam (the blank apart)


class LmError(TympanError, ValueError):
    """An n-gram model file that is missing, malformed or inconsistent."""


def pack(ids: Sequence[int]) -> int:
    key = 0
    for i in ids:
        key = (key << BITS) | i
    return key


@dataclass(frozen=True)
class LmSettings:
    """How the beam weighs the LM: chosen on dev utterances by `tympan.training.ngram`."""

    weight: float  # x LM log-probability (natural log) per token
    length_bonus: float  # added per token
    beam: int  # label sequences kept per frame
    prune: float = -8.0  # a frame's labels with log p below this are not extended


class NgramLM:
    """Token n-gram probabilities in backoff form (see the module docstring)."""

    def __init__(self, order: int, keys: Sequence[np.ndarray], logp: Sequence[np.ndarray],
                 backoff: Sequence[np.ndarray], unk_logp: float, settings: LmSettings) -> None:
        if not 1 <= order <= MAX_ORDER:
            raise LmError(f"n-gram order {order}: must be 1 to {MAX_ORDER}")
        if not len(keys) == len(logp) == len(backoff) == order:
            raise LmError(f"an order-{order} model needs {order} key, log-prob and backoff arrays, got "
                          f"{len(keys)}, {len(logp)}, {len(backoff)}")
        for n, (k, p, b) in enumerate(zip(keys, logp, backoff, strict=True), start=1):
            if not k.shape == p.shape == b.shape or k.ndim != 1:
                raise LmError(f"{n}-grams: keys {k.shape}, log-probs {p.shape}, backoffs {b.shape} differ")
            if k.size > 1 and not bool(np.all(k[1:] > k[:-1])):
                raise LmError(f"{n}-gram keys are not sorted and unique")
        self.order = order
        self.keys = [np.ascontiguousarray(k, dtype=np.int64) for k in keys]
        self.logp_ = [np.asarray(p, dtype=np.float32) for p in logp]
        self.backoff = [np.asarray(b, dtype=np.float32) for b in backoff]
        self.unk_logp = float(unk_logp)
        self.settings = settings

    def _find(self, n: int, key: int) -> int:
        keys = self.keys[n - 1]
        i = int(np.searchsorted(keys, key))
        return i if i < keys.size and int(keys[i]) == key else -1

    def logp(self, context: Sequence[int], token: int) -> float:
        """Natural-log P(token | the last order-1 ids of context); BOS pads a short context."""
        context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        context = (BOS,) * (self.order - 1 - len(context)) + context
        penalty = 0.0
        for n in range(self.order, 0, -1):
            history = context[len(context) - (n - 1):] if n > 1 else ()
            i = self._find(n, pack((*history, token)))
            if i >= 0:
                return penalty + float(self.logp_[n - 1][i])
            if n > 1:
                j = self._find(n - 1, pack(history))
                if j >= 0:
                    penalty += float(self.backoff[n - 2][j])
        return penalty + self.unk_logp

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"order": np.array(self.order), "unk_logp": np.array(self.unk_logp),
                                         "weight": np.array(self.settings.weight),
                                         "length_bonus": np.array(self.settings.length_bonus),
                                         "beam": np.array(self.settings.beam)}
        for n in range(1, self.order + 1):
            arrays[f"keys{n}"] = self.keys[n - 1]
            arrays[f"logp{n}"] = self.logp_[n - 1]
            arrays[f"backoff{n}"] = self.backoff[n - 1]
        tmp = path.with_name(f".{path.name}.tmp")  # a reader never sees a half-written model
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> NgramLM:
        try:
            with np.load(path, allow_pickle=False) as z:
                order = int(z["order"])
                if not 1 <= order <= MAX_ORDER:
                    raise LmError(f"n-gram order {order}: must be 1 to {MAX_ORDER}")
                settings = LmSettings(weight=float(z["weight"]), length_bonus=float(z["length_bonus"]),
                                      beam=int(z["beam"]))
                return cls(order, [z[f"keys{n}"] for n in range(1, order + 1)],
                           [z[f"logp{n}"] for n in range(1, order + 1)],
                           [z[f"backoff{n}"] for n in range(1, order + 1)], float(z["unk_logp"]), settings)
        except LmError as e:
            raise LmError(f"{path}: {e}") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise LmError(f"{path}: not a tympan n-gram model ({e})") from None

    def with_settings(self, settings: LmSettings) -> NgramLM:
        return NgramLM(self.order, self.keys, self.logp_, self.backoff, self.unk_logp, settings)


def _add(a: float, b: float) -> float:
    """log(exp(a) + exp(b))."""
    if a < b:
        a, b = b, a
    return a if b <= NEG else a + math.log1p(math.exp(b - a))


def beam_search(top_ids: np.ndarray, top_logp: np.ndarray, blank_logp: np.ndarray, lm: NgramLM) -> list[int]:
    """CTC prefix beam search over each frame's best labels, scored with the LM: the label ids of the best sequence.

    top_ids (T, K) label ids (LLM token ids), top_logp (T, K) their log-probabilities, blank_logp (T,).
    Each kept prefix carries two CTC probabilities (ending in a blank, ending in its last label), so
    that a repeated label is one token unless a blank separates its frames."""
    s = lm.settings
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG]}
    fused: dict[tuple[int, ...], float] = {(): 0.0}  # weight x LM log p + bonus, per prefix

    def extend(prefix: tuple[int, ...], label: int) -> tuple[int, ...]:
        new = (*prefix, label)
        if new not in fused:
            fused[new] = fused[prefix] + s.weight * lm.logp(prefix, label) + s.length_bonus
        return new

    for t in range(blank_logp.shape[0]):
        labels = [(int(i), float(p)) for i, p in zip(top_ids[t], top_logp[t], strict=True) if p > s.prune]
        blank = float(blank_logp[t])
        step: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_blank, p_label) in beams.items():
            here = step.setdefault(prefix, [NEG, NEG])
            here[0] = _add(here[0], _add(p_blank, p_label) + blank)
            last = prefix[-1] if prefix else None
            for label, p in labels:
                if label == last:
                    here[1] = _add(here[1], p_label + p)  # the same label again, no blank between: one token
                    new = extend(prefix, label)
                    entry = step.setdefault(new, [NEG, NEG])
                    entry[1] = _add(entry[1], p_blank + p)
                else:
                    new = extend(prefix, label)
                    entry = step.setdefault(new, [NEG, NEG])
                    entry[1] = _add(entry[1], _add(p_blank, p_label) + p)
        ranked = sorted(step.items(), key=lambda kv: -(_add(*kv[1]) + fused[kv[0]]))
        beams = dict(ranked[: s.beam])

    def total(item: tuple[tuple[int, ...], list[float]]) -> float:
        prefix, probs = item
        return _add(*probs) + fused[prefix] + s.weight * lm.logp(prefix, EOS)

    return list(max(beams.items(), key=total)[0])
