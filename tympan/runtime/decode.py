"""Greedy decoding, written once: the daemon's engine, `tympan infer`, `tympan eval` (bundle and checkpoint) and
export's verification all decode through `greedy_decode`, so they get the same tokens from the same model.

A backend gives only the model step (`StepLLM`: prefill the prompt, then one token at a time, each returning the
next position's logits); this loop picks each token (argmax), and stops at a stop id, at the token limit, when
the output loops (`repeating_tail`) or when the caller cancels, streaming the tokens so far as they come.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from tympan.config import check, check_fields, non_negative, positive
from tympan.errors import TympanError


class DecodeError(TympanError, ValueError):
    """Inputs the decoder cannot take: wrong shape, empty, not finite."""


@dataclass(frozen=True)
class DecodeSettings:
    """Limits of one decode. The defaults are the daemon's (`[decode]` in configs/daemon.toml extends this), so
    that `tympan eval` and `tympan infer` print what a daemon user gets."""

    # Hard cap on generated tokens (a model's own cap applies too: see `capped`).
    max_new_tokens: int = field(default=128, metadata=check(positive))
    # Loop guard: stop when the last tokens repeat an n-gram (n <= repeat_ngram_max; 0 = no guard) ...
    repeat_ngram_max: int = field(default=8, metadata=check(non_negative))
    # ... this many times in a row.
    repeat_times: int = field(default=3, metadata=check(positive))
    # ASR with a CTC bridge: an answer whose spoken form departs from what was heard (the greedy CTC text) by
    # more than `max_departure` word edits per heard word is replaced by the heard words (runtime/grounding.py).
    # 0.2: the lowest dev WER of the shipped model among 0.2-1.0 (docs/training.md).
    ground_asr: bool = True
    max_departure: float = field(default=0.2, metadata=check(positive))

    def __post_init__(self) -> None:
        check_fields(self, "decode")

    @classmethod
    def unguarded(cls, max_new_tokens: int) -> DecodeSettings:
        """The model's own greedy tokens up to a limit, loops and all: what export verification compares."""
        return cls(max_new_tokens=max_new_tokens, repeat_ngram_max=0)

    def capped(self, limit: int) -> DecodeSettings:
        """These settings under a model's own token limit."""
        return self if self.max_new_tokens <= limit else replace(self, max_new_tokens=limit)


# What the daemon decodes with unless configured otherwise, and `tympan eval` and `tympan infer` with it.
DEFAULT_SETTINGS = DecodeSettings()


class Stop(enum.Enum):
    """Why decoding ended."""

    STOP_TOKEN = "stop_token"  # the model produced a stop id (not part of the tokens)
    LIMIT = "limit"  # max_new_tokens reached
    LOOP = "loop"  # the loop guard fired; the repeats were cut off
    CANCELLED = "cancelled"  # the caller's `cancelled()` said so
    NOTHING_HEARD = "nothing_heard"  # a CTC bridge recognised no token: no decode, no answer (not a guess)
    ENDED = "ended"  # the caller's `ended(tokens)` said the answer is complete (its last token included)


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]
    stop: Stop


class StepLLM(Protocol):
    """An LLM as the decode loop drives it. `state` is the backend's own (its KV cache and position)."""

    hidden_size: int

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """Token embedding rows, (len(ids), hidden) float32."""
        ...

    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, Any]:
        """Run the prompt, (positions, hidden) float32: the (vocab,) logits of the next position, and the state."""
        ...

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        """Feed one token: the (vocab,) logits of the next position, and the grown state."""
        ...


def repeating_tail(tokens: Sequence[int], ngram_max: int, times: int) -> int:
    """How many trailing tokens are a loop (an n-gram repeated `times` times in a row), else 0.

    Returns the length of the repeats beyond the first occurrence, to cut them off. Short
    n-grams must repeat more often (a loop spans at least 8 tokens), so that digit groups
    ("1,000,000") or a doubled word are not taken for a loop.
    """
    for n in range(1, ngram_max + 1):
        repeats = max(times, -(-8 // n))
        span = n * repeats
        if len(tokens) < span:
            continue
        tail = tokens[-span:]
        gram = tail[-n:]
        if all(tail[i * n : (i + 1) * n] == gram for i in range(repeats)):
            return n * (repeats - 1)
    return 0


def check_inputs(inputs_embeds: np.ndarray, hidden_size: int) -> np.ndarray:
    """One prompt as contiguous float32 (positions, hidden); (1, positions, hidden) is taken too."""
    embeds = np.asarray(inputs_embeds)
    if embeds.ndim == 3:
        if embeds.shape[0] != 1:
            raise DecodeError(f"inputs_embeds holds {embeds.shape[0]} sequences; decoding takes one")
        embeds = embeds[0]
    if embeds.ndim != 2:
        raise DecodeError(f"inputs_embeds must be (seq, hidden) or (1, seq, hidden), got shape {embeds.shape}")
    if embeds.shape[1] != hidden_size:
        raise DecodeError(f"inputs_embeds hidden size {embeds.shape[1]} != the model's {hidden_size}")
    if embeds.shape[0] == 0:
        raise DecodeError("inputs_embeds is empty (0 positions)")
    if not np.issubdtype(embeds.dtype, np.floating):
        raise DecodeError(f"inputs_embeds must be floating point, got {embeds.dtype}")
    embeds = np.ascontiguousarray(embeds, dtype=np.float32)
    if not np.isfinite(embeds).all():
        raise DecodeError("inputs_embeds holds NaN or infinite values")
    return embeds


def greedy_decode(
    llm: StepLLM,
    inputs_embeds: np.ndarray,
    stop_ids: Collection[int],
    settings: DecodeSettings,
    *,
    cancelled: Callable[[], bool] | None = None,
    on_token: Callable[[Sequence[int]], None] | None = None,
    ended: Callable[[Sequence[int]], bool] | None = None,
) -> Decoded:
    """Greedy tokens for one prompt. `cancelled` is asked after every model call; `on_token(tokens)` gets the
    tokens so far after each new one (loops already cut; the list is the decoder's own: read, do not keep);
    `ended(tokens)`, asked after each new token, ends the decode without another model call (a token that closes
    the answer but carries text too, such as ".\n", cannot be a stop id)."""
    embeds = check_inputs(inputs_embeds, llm.hidden_size)
    stops = frozenset(int(i) for i in stop_ids)
    tokens: list[int] = []
    logits, state = llm.prefill(embeds)
    while True:
        token = int(np.argmax(logits))
        if token in stops:
            return Decoded(tokens, Stop.STOP_TOKEN)
        if cancelled is not None and cancelled():
            return Decoded(tokens, Stop.CANCELLED)
        tokens.append(token)
        looped = repeating_tail(tokens, settings.repeat_ngram_max, settings.repeat_times)
        if looped:
            del tokens[-looped:]
            return Decoded(tokens, Stop.LOOP)
        if ended is not None and ended(tokens):
            return Decoded(tokens, Stop.ENDED)
        if on_token is not None:
            on_token(tokens)
        if len(tokens) == settings.max_new_tokens:
            return Decoded(tokens, Stop.LIMIT)  # no step whose logits nobody reads
        logits, state = llm.step(token, state)
