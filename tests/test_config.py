from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from tympan.config import ConfigError
from tympan.training.recipe import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_shipped_configs_parse_and_validate() -> None:
    seed = load_config(CONFIGS / "iwslt2025.toml")
    assert seed.encoder.kind == "seamless_m4t_v2"
    assert seed.encoder.checkpoint == "facebook/seamless-m4t-v2-large"
    assert seed.encoder.layer == 24
    assert seed.projector.frame_average == 3
    assert seed.llm.checkpoint == "meta-llama/Llama-3.1-8B-Instruct"
    assert (seed.lora.r, seed.lora.alpha) == (8, 16.0)
    assert set(seed.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}
    assert seed.train.joint.steps == 1000
    assert seed.train.precision == "bf16"
    tiny = load_config(CONFIGS / "tiny.toml")
    assert tiny.encoder.random is not None and tiny.llm.random is not None


def test_overrides_set_dotted_keys_and_are_validated_like_the_file(tmp_path: Path) -> None:
    """`tympan train --set KEY=VALUE`: the shipped default's lora stage is configs/default.toml with
    a larger batch and more steps, run on a GPU, without a second copy of the recipe."""
    cfg = load_config(CONFIGS / "default.toml", ["train.batch_size=32", "train.lora.steps = 1915",
                                                 "projector.bridge=top1", "train.augment.time_masks=0"])
    plain = load_config(CONFIGS / "default.toml")
    assert (cfg.train.batch_size, cfg.train.lora.steps, cfg.projector.bridge) == (32, 1915, "top1")
    assert cfg.train.augment.time_masks == 0 and plain.train.augment.time_masks > 0
    assert cfg.train.lora.lr == plain.train.lora.lr and cfg.train.ctc == plain.train.ctc
    path = _write(tmp_path, BASE)
    for bad, message in [("train.lora.stepz=3", "unknown key train.lora.stepz"),
                         ("train.batch_size=many", "train.batch_size: expected an integer"),
                         ("train.batch_size=0", "train.batch_size: must be > 0"),
                         ("seed.x=1", "seed: expected an integer"),
                         ("encoder.kind.x=1", "override encoder.kind.x: encoder.kind is not a table"),
                         ("seed", "override 'seed' is not KEY=VALUE")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, [bad])


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


BASE = '[encoder]\nkind = "whisper"\n[encoder.random]\n[llm.random]\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[projector]\nwidht = 3\n", "unknown key projector.widht"),
        ("[projector]\nwidth = -4\n", "projector.width: must be > 0"),
        ("[projector]\nwidth = 'big'\n", "projector.width: expected an integer"),
        ("[train]\nprecision = 'fp8'\n", "train.precision: 'fp8' is not one of"),
        ("[train.joint]\ntasks = ['asr', 'dance']\n", "train.joint.tasks[1]: 'dance' is not one of"),
        ("[prompt.instructions.sqa]\nde = 'Antworte.'\n", "must contain {question}"),
        ("[prompt.instructions.dance]\nen = 'Dance.'\n", "prompt.instructions.dance: unknown task (asr, st, sqa)"),
        ("[lora]\ndropout = 1.5\n", "lora.dropout: must be in [0, 1)"),
        ("[train.lora]\ntasks = ['asr']\ntask_shares = { st = 1.0 }\n",
         "train.lora.task_shares.st: not one of the stage's tasks (asr)"),
        ("[train.lora]\ntask_shares = { asr = 0, st = 1, sqa = 1 }\n",
         "train.lora.task_shares.asr: must be > 0, got 0.0"),
        ("[train.lora]\ntask_shares = { asr = 1 }\n", "train.lora.task_shares: no share for 'st'"),
        ("[train.lora]\ntrain_projector = false\n", "train.lora.train_projector: only the joint stage"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_write(tmp_path, BASE + extra))


def test_the_recipes_task_type_names_the_tasks_of_tympan_tasks() -> None:
    from tympan.tasks import TASKS
    from tympan.training.recipe import StageConfig, Task

    assert typing.get_args(Task) == TASKS
    assert tuple(StageConfig().tasks) == TASKS


def test_missing_encoder_weights_and_random_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set encoder.checkpoint or an \[encoder.random\] table"):
        load_config(_write(tmp_path, '[encoder]\nkind = "whisper"\n[llm.random]\n'))
    with pytest.raises(ConfigError, match="missing required key encoder"):
        load_config(_write(tmp_path, "[llm.random]\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[encoder\n"))


def test_data_paths_resolve_relative_to_the_config_and_expand_home(tmp_path: Path, tympan_home: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE + '[data]\ntrain = ["m/train.jsonl", "$TYMPAN_HOME/x.jsonl"]\n'))
    assert cfg.resolve(cfg.data.train[0]) == tmp_path / "m" / "train.jsonl"
    assert cfg.resolve(cfg.data.train[1]) == tympan_home / "x.jsonl"


def test_a_saved_config_keeps_pointing_at_the_same_data(tmp_path: Path) -> None:
    from tympan.config import dump_toml
    from tympan.training.recipe import config_from_dict

    cfg = load_config(_write(tmp_path, BASE + '[data]\ntrain = ["m/train.jsonl", "toy:train"]\n'))
    elsewhere = config_from_dict(__import__("tomllib").loads(dump_toml(cfg.to_toml_dict())), source="saved")
    assert elsewhere.resolve(elsewhere.data.train[0]) == tmp_path / "m" / "train.jsonl"
    assert elsewhere.data.train[1] == "toy:train"
