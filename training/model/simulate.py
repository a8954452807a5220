"""Simulated CTC bridge inputs from text, so the LLM side learns from text alone what the bridge gives it.

The bridge hands the LLM one vector per segment: a posterior-weighted sum of embedding rows
(training/model/ctc.py). From a transcript's spoken-form tokens this module draws what such
segments look like when the CTC head is right most of the time but not always: each token is
kept, dropped (deletion), replaced by a token the head confuses it with (substitution), or followed
by a spurious one (insertion), at rates measured on the real head (`measure`); and each segment's
probability mass is split between its best token (the peak, drawn around the measured mean) and
the head's usual confusions of it. The segment's vector is then formed as the bridge forms it
(top-k rows, weights renormalised), so real and simulated inputs come from one code path.

Confusions are the head's own, counted on dev alignments (not embedding neighbours, which are
semantic: "two" for "three"). A token never seen confused spreads its mass over random tokens.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tympan.atomic import write_json


@dataclass(frozen=True)
class ErrorProfile:
    """How a CTC head errs, per reference token: rates, peak probability, and confusions."""

    substitution: float = 0.0
    deletion: float = 0.0
    insertion: float = 0.0
    peak_mean: float = 0.95
    peak_std: float = 0.05
    # class index -> [(confused class index, count)], most frequent first
    confusions: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def scaled(self, factor: float) -> ErrorProfile:
        """The same head with its error rates scaled (a curriculum: easy inputs first)."""
        return ErrorProfile(min(1.0, self.substitution * factor), min(1.0, self.deletion * factor),
                            min(1.0, self.insertion * factor), self.peak_mean, self.peak_std, self.confusions)

    def save(self, path: Path) -> None:
        data = {"substitution": self.substitution, "deletion": self.deletion, "insertion": self.insertion,
                "peak_mean": self.peak_mean, "peak_std": self.peak_std,
                "confusions": {str(k): v for k, v in self.confusions.items()}}
        write_json(path, data)

    @classmethod
    def load(cls, path: Path) -> ErrorProfile:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        confusions = {int(k): [(int(a), int(b)) for a, b in v] for k, v in data.pop("confusions").items()}
        return cls(**data, confusions=confusions)


def align(ref: Sequence[int], hyp: Sequence[int]) -> list[tuple[int | None, int | None]]:
    """Levenshtein alignment as (reference, hypothesis) pairs; None marks an insertion or a deletion."""
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1, cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            pairs.append((ref[i - 1], None))
            i -= 1
        else:
            pairs.append((None, hyp[j - 1]))
            j -= 1
    return pairs[::-1]


def measure(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]], peaks: Sequence[float]) -> ErrorProfile:
    """An error profile from reference and greedy-CTC class sequences, and the peak probabilities of
    the bridge's segments on the same utterances."""
    subs = dels = ins = total = 0
    confusions: dict[int, Counter[int]] = defaultdict(Counter)
    for ref, hyp in zip(refs, hyps, strict=True):
        total += len(ref)
        for r, h in align(ref, hyp):
            if r is None:
                ins += 1
            elif h is None:
                dels += 1
            elif r != h:
                subs += 1
                confusions[r][h] += 1
    total = max(total, 1)
    peak = np.asarray(peaks, dtype=np.float64) if len(peaks) else np.array([0.95])
    return ErrorProfile(subs / total, dels / total, ins / total, float(peak.mean()), float(peak.std()),
                        {r: c.most_common(8) for r, c in confusions.items()})


def simulate(tokens: Sequence[int], profile: ErrorProfile, vocab_size: int, top_k: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Segments for a token sequence: (S, top_k) class ids and (S, top_k) weights summing to 1 per row.

    Always at least one segment when `tokens` is not empty (an utterance heard as nothing would
    teach the LLM to answer from the instruction alone)."""
    rows: list[tuple[list[int], list[float]]] = []

    def segment(best: int) -> tuple[list[int], list[float]]:
        peak = float(np.clip(rng.normal(profile.peak_mean, profile.peak_std), 0.3, 1.0))
        others = [c for c, _ in profile.confusions.get(best, []) if c != best][: top_k - 1]
        while len(others) < top_k - 1:
            c = int(rng.integers(vocab_size))
            if c != best and c not in others:
                others.append(c)
        rest = rng.dirichlet(np.ones(len(others))) * (1.0 - peak) if others else np.zeros(0)
        return [best, *others], [peak, *rest.tolist()]

    for token in tokens:
        draw = rng.random()
        if draw < profile.deletion:
            continue
        if draw < profile.deletion + profile.substitution:
            confused = profile.confusions.get(token)
            if confused:
                counts = np.array([n for _, n in confused], dtype=np.float64)
                token = confused[int(rng.choice(len(confused), p=counts / counts.sum()))][0]
            else:
                token = int(rng.integers(vocab_size))
        rows.append(segment(token))
        if rng.random() < profile.insertion:
            rows.append(segment(int(rng.integers(vocab_size))))
    if not rows and len(tokens):
        rows.append(segment(int(tokens[int(rng.integers(len(tokens)))])))
    ids = np.array([r[0] for r in rows], dtype=np.int64).reshape(len(rows), top_k)
    weights = np.array([r[1] for r in rows], dtype=np.float32).reshape(len(rows), top_k)
    return ids, weights / weights.sum(-1, keepdims=True).clip(min=1e-12)


def embed(ids: np.ndarray, weights: np.ndarray, table: torch.Tensor) -> torch.Tensor:
    """Segment vectors as the bridge forms them: the weighted sum of the rows of `table` (S, H)."""
    rows = table[torch.from_numpy(ids).to(table.device)]
    return (torch.from_numpy(weights).to(table.device, table.dtype)[..., None] * rows).sum(-2)
