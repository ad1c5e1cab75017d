"""pixpref.config: YAML -> nested validating dataclasses, overrides, and clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from pixpref.config import load_config, save_config
from pixpref.data.pairs import DataConfig
from pixpref.errors import PixprefError


@dataclasses.dataclass
class TrainSection:
    lr: float = 1e-4
    steps: int = 100
    loss: Literal["dpo", "inpo"] = "dpo"
    use_ema: bool = True
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise PixprefError(f"train.lr must be > 0, got {self.lr}")


@dataclasses.dataclass
class Experiment:
    name: str = "toy"
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_nested_yaml_loads(tmp_path: Path):
    path = _yaml(tmp_path, """
name: run1
train:
  lr: 3.0e-5
  steps: 250
  loss: inpo
  use_ema: false
  betas: [0.8, 0.99]
data:
  path: pairs.parquet
  tie_policy: soft
  k: 6
  image_size: 64
""")
    cfg = load_config(path, Experiment)
    assert cfg.name == "run1" and isinstance(cfg.train, TrainSection) and isinstance(cfg.data, DataConfig)
    assert (cfg.train.lr, cfg.train.steps, cfg.train.loss, cfg.train.use_ema) == (3e-5, 250, "inpo", False)
    assert cfg.train.betas == [0.8, 0.99]
    assert (cfg.data.tie_policy, cfg.data.k, cfg.data.image_size, cfg.data.max_chunks_per_user) == ("soft", 6, 64, 20)
    saved = tmp_path / "saved.yaml"
    save_config(cfg, saved)
    assert load_config(saved, Experiment) == cfg


def test_defaults_when_no_file():
    assert load_config(None, Experiment) == Experiment()


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path: Path):
    with pytest.raises(PixprefError) as e:
        load_config(_yaml(tmp_path, "train:\n  lrr: 0.1\n"), Experiment)
    msg = str(e.value)
    assert "'train.lrr'" in msg and "did you mean 'lr'" in msg
    assert "betas, loss, lr, steps, use_ema" in msg
    with pytest.raises(PixprefError, match="unknown config key 'dta'.*did you mean 'data'.*data, name, train"):
        load_config(_yaml(tmp_path, "dta: {}\n"), Experiment)
    with pytest.raises(PixprefError, match="data.tie_polcy.*did you mean 'tie_policy'"):
        load_config(None, Experiment, overrides=["data.tie_polcy=soft"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  steps: many\n", "train.steps: expected an integer, got 'many'"),
        ("train:\n  steps: 2.5\n", "train.steps: expected an integer"),
        ("train:\n  use_ema: maybe\n", "train.use_ema: expected true/false"),
        ("train:\n  lr: fast\n", "train.lr: expected a number"),
        ("train:\n  loss: ppo\n", "train.loss: invalid value 'ppo'; valid options: dpo, inpo"),
        ("train:\n  betas: 0.9\n", "train.betas: expected a list"),
        ("train: 5\n", "train: expected a mapping"),
        ("name: [1, 2]\n", "name: expected a string"),
        ("data:\n  tie_policy: keep\n", "data.tie_policy: invalid value 'keep'; valid options: drop, soft"),
        ("data:\n  k: 0\n", "data.k must be >= 1"),
        ("data:\n  unseen_user_fraction: 1.5\n", r"unseen_user_fraction must be in \[0, 1\)"),
        ("train:\n  lr: -1\n", "train.lr must be > 0"),
    ],
)
def test_type_and_range_errors(tmp_path: Path, text: str, message: str):
    with pytest.raises(PixprefError, match=message):
        load_config(_yaml(tmp_path, text), Experiment)


def test_overrides(tmp_path: Path):
    path = _yaml(tmp_path, "train:\n  lr: 1.0e-4\n")
    cfg = load_config(path, Experiment, overrides=["train.lr=1e-5", "train.steps=7", "data.image_size=null",
                                                   "data.format=jsonl", "name=x=y"])
    assert cfg.train.lr == 1e-5 and cfg.train.steps == 7 and cfg.data.image_size is None
    assert cfg.data.format == "jsonl" and cfg.name == "x=y"
    with pytest.raises(PixprefError, match="must look like section.key=value"):
        load_config(path, Experiment, overrides=["train.lr"])
    with pytest.raises(PixprefError, match="'lr' is not a section"):
        load_config(path, Experiment, overrides=["train.lr.x=1"])


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_rejected(tmp_path: Path, bad: str):
    with pytest.raises(PixprefError, match="train.lr: expected a finite number"):
        load_config(_yaml(tmp_path, f"train:\n  lr: {bad}\n"), Experiment)
    with pytest.raises(PixprefError, match="expected a finite number"):
        load_config(None, Experiment, overrides=[f"train.lr={bad}"])
    with pytest.raises(PixprefError, match="expected a finite number"):
        load_config(None, Experiment, overrides=["train.lr=nan"])


def test_file_errors(tmp_path: Path):
    with pytest.raises(PixprefError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Experiment)
    with pytest.raises(PixprefError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "train: [unclosed\n"), Experiment)
    with pytest.raises(PixprefError, match="must hold a mapping at top level"):
        load_config(_yaml(tmp_path, "- a\n- b\n"), Experiment)


def test_shipped_toy_data_config_loads():
    path = Path(__file__).resolve().parents[1] / "configs" / "toy" / "data.yaml"
    cfg = load_config(path, DataConfig, overrides=["k=3"])
    assert cfg.k == 3 and cfg.tie_policy == "drop" and cfg.image_size == 32
