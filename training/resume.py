"""What an interrupted stage resumes from: its step checkpoints, the RNG states, its log cut back.

A step checkpoint OUT/<stage>/step-NNNNNN holds the trainer state (optimizer, scheduler, one
RNG state per process); restoring all of it makes a resumed run bit-identical to one that
never stopped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_PREFIX = "step-"


def step_dirs(stage_dir: Path, marker: str = "checkpoint.json") -> list[Path]:
    """The stage's complete step checkpoints (those holding `marker`), oldest first."""
    dirs = [p for p in stage_dir.glob(f"{STEP_PREFIX}*") if (p / marker).is_file()]
    return sorted(dirs, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def truncate_log(log: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that stopped before its next checkpoint)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash
    log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
