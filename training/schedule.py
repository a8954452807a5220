"""The learning-rate schedule every stage uses: linear warm-up, then a cosine down to 0."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_factor(warmup: int, total: int) -> Callable[[int], float]:
    """The factor on the base learning rate at each step (for `torch.optim.lr_scheduler.LambdaLR`)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f
