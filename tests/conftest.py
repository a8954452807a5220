"""Shared fixtures: an isolated TYMPAN_HOME, the toy corpus, the tiny config, and an MQTT broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session", autouse=True)
def tympan_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tympan_home")
    os.environ["TYMPAN_HOME"] = str(home)
    # The tests serve the tiny model (trained in seconds), never the shipped default.
    os.environ["TYMPAN_MODEL"] = "tiny"
    return home


@pytest.fixture(scope="session")
def toy_corpus(tympan_home: Path) -> Path:
    from tympan.training.toy import build_toy

    return build_toy(tympan_home / "toy")


@pytest.fixture(scope="session")
def tiny_cfg(toy_corpus: Path):
    from tympan.training.recipe import load_config

    return load_config(CONFIGS / "tiny.toml")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state (precision, device); each test starts clean."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """A real mosquitto broker for the tests of one module (tests/broker.py)."""
    from broker import Broker

    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b
