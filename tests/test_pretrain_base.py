"""Base-model pretraining: a tiny run writes a loadable pipeline folder and a loss log, reproducibly."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pixpref.cli import main
from pixpref.config import load_config
from pixpref.errors import PixprefError
from pixpref.models.diffusion import load_pipeline
from pixpref.pretrain import base
from pixpref.pretrain.cli import CONFIG_DIR, parse_only, split_overrides

TINY = [
    "steps=4", "batch_size=4", "warmup_steps=1", "log_every=1", "save_every=2",
    "model.block_out_channels=[16, 32]", "model.cross_attention=[false, true]", "model.text_hidden_size=32",
    "model.text_layers=1", "model.text_heads=2", "sample_prompts=['a red circle']", "sample_steps=2",
]


def tiny_cfg(*extra: str) -> base.PretrainConfig:
    return load_config(None, base.PretrainConfig, overrides=TINY + list(extra))


def test_shipped_config_is_valid():
    cfg = load_config(CONFIG_DIR / "pretrain_base.yaml", base.PretrainConfig)
    assert cfg.prompt_dropout > 0 and cfg.save_dtype == "float16"
    assert len(cfg.model.cross_attention) == len(cfg.model.block_out_channels)
    with pytest.raises(PixprefError, match="valid keys"):
        load_config(None, base.PretrainConfig, overrides=["stepz=3"])
    with pytest.raises(PixprefError, match="prompt_dropout"):
        load_config(None, base.PretrainConfig, overrides=["prompt_dropout=1.5"])


def test_scene_stream_uses_seen_combos_and_drops_prompts():
    from pixpref.toyworld.scene import HELD_OUT_COMBOS

    stream = base.SceneStream(seed=0, image_size=32, prompt_dropout=0.3)
    images, prompts = stream.batch(200)
    assert images.shape == (200, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    dropped = sum(p == "" for p in prompts)
    assert 30 <= dropped <= 90
    for p in prompts:
        for colour, shape in HELD_OUT_COMBOS:
            assert not (colour in p.split() and shape in p.split()), p


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny config trained twice: (cfg, metrics of run a, folder a, folder b)."""
    root = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_cfg()
    metrics = base.run(root / "a", cfg)
    base.run(root / "b", cfg)
    return cfg, metrics, root / "a" / "base", root / "b" / "base"


def test_tiny_pretraining_writes_loadable_folder_and_log(two_runs):
    cfg, metrics, out, _ = two_runs
    assert metrics["steps"] == 4 and np.isfinite(metrics["final_loss_avg50"])
    for name in ("model_index.json", "unet", "text_encoder", "tokenizer", "scheduler", "samples.png",
                 "pretrain_config.yaml", "metrics.json"):
        assert (out / name).exists(), name
    log = [json.loads(line) for line in (out / base.LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in log)
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # fp16 on disk

    pipe = load_pipeline(out)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    fresh = base.build_pipeline(cfg)  # the same initialisation, untrained
    trained = dict(pipe.unet.named_parameters())
    changed = [n for n, p in fresh.unet.named_parameters() if not torch.allclose(p, trained[n].float(), atol=1e-3)]
    assert len(changed) > len(trained) // 2  # training (and EMA) moved most parameters


def test_pretraining_is_reproducible(two_runs):
    _, _, a, b = two_runs
    loss = [[json.loads(line)["loss"] for line in (r / base.LOSS_LOG).read_text().splitlines()] for r in (a, b)]
    assert loss[0] == loss[1]
    for sub in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes(), sub


def test_init_from_continues_from_a_saved_folder(two_runs, tmp_path):
    _, _, a, _ = two_runs
    # lr ~ 0: the continued run starts from, and so stays at, folder a's (fp16) weights, not a fresh init
    base.run(tmp_path / "c", tiny_cfg(f"init_from={a}", "steps=2", "lr=1e-12", "save_every=0"))
    before, after = load_pipeline(a), load_pipeline(tmp_path / "c" / "base")
    for name in ("unet", "text_encoder"):
        mine = dict(getattr(after, name).named_parameters())
        for n, p in getattr(before, name).named_parameters():
            torch.testing.assert_close(mine[n].float(), p.float(), atol=2e-3, rtol=0), (name, n)
    assert json.loads((tmp_path / "c" / "base" / "metrics.json").read_text())["init_from"] == str(a)
    with pytest.raises(PixprefError, match="does not match this config's model architecture"):
        base.run(tmp_path / "d", tiny_cfg(f"init_from={a}", "model.block_out_channels=[16, 16]"))


def test_pretrain_cli_only_base_and_errors(tmp_path, capsys):
    sets = [x for item in TINY + ["steps=2"] for x in ("--set", f"base.{item}")]
    assert main(["pretrain", "toy", "--out", str(tmp_path), "--only", "base", *sets]) == 0
    assert (tmp_path / "base" / "model_index.json").is_file()
    assert "base" in json.loads((tmp_path / "pretrain_summary.json").read_text())
    # existing output needs --overwrite
    assert main(["pretrain", "toy", "--out", str(tmp_path), "--only", "base", *sets]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["pretrain", "toy", "--out", str(tmp_path), "--only", "bass"]) == 2
    assert "valid options: base, clip, vlm" in capsys.readouterr().err
    assert main(["pretrain", "toy", "--out", str(tmp_path), "--set", "steps=3"]) == 2
    assert "must start with a part name" in capsys.readouterr().err


def test_only_and_override_parsing():
    assert parse_only(None) == ["base", "vlm", "clip"]
    assert parse_only("clip, base") == ["base", "clip"]
    with pytest.raises(PixprefError, match="valid parts"):
        parse_only(" , ")
    assert split_overrides(["base.steps=3", "vlm.lr=1"])["base"] == ["steps=3"]
