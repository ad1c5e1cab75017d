"""Base-model pretraining: a tiny run writes a loadable pipeline folder and a loss log, reproducibly."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from pixpref.cli import main
from pixpref.config import load_config, to_dict
from pixpref.errors import PixprefError
from pixpref.models.diffusion import load_pipeline
from pixpref.pretrain import base
from pixpref.pretrain.cli import CONFIG_DIR, parse_only, run_part, split_overrides, stage_configs

SHIPPED_BASE = Path(__file__).resolve().parents[1] / "pixpref" / "pretrained" / "toy" / "base"

TINY = [
    "steps=4", "batch_size=4", "warmup_steps=1", "log_every=1", "save_every=2",
    "model.block_out_channels=[16, 32]", "model.cross_attention=[false, true]", "model.text_hidden_size=32",
    "model.text_layers=1", "model.text_heads=2", "sample_prompts=['a red circle']", "sample_steps=2",
]


def tiny_cfg(*extra: str) -> base.PretrainConfig:
    return load_config(None, base.PretrainConfig, overrides=TINY + list(extra))


def test_shipped_config_is_valid():
    stages = stage_configs("base", [])
    assert len(stages) == 3 and [c.steps for c in stages] == [2000, 2000, 2500]
    cfg = stages[0]
    assert cfg.prompt_dropout > 0 and cfg.save_dtype == "float16"
    # the recipe's last stage is the one the shipped folder records (its init_from was a path on the machine)
    shipped = yaml.safe_load((SHIPPED_BASE / "pretrain_config.yaml").read_text())
    last = yaml.safe_load(yaml.safe_dump(to_dict(stages[-1])))
    assert {k: v for k, v in last.items() if k != "init_from"} == {k: v for k, v in shipped.items() if k != "init_from"}
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
    sets += ["--stages", "1"]
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


def _tiny_config_dir(root: Path, stages: list[dict]) -> Path:
    """A config folder whose pretrain_base.yaml is the tiny config plus ``stages``."""
    from pixpref.config import apply_overrides

    data = apply_overrides({}, TINY + ["save_every=0"])
    data["stages"] = stages
    folder = root / "configs"
    folder.mkdir()
    (folder / "pretrain_base.yaml").write_text(yaml.safe_dump(data))
    return folder


def _weights(folder: Path) -> bytes:
    return (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


STAGE2 = {"steps": 3, "lr": 5.0e-4, "warmup_steps": 1, "prompt_dropout": 0.2}


def test_stages_in_one_command_equal_the_stages_run_by_hand(tmp_path):
    """The YAML's stages chain exactly as separate runs continuing with init_from do."""
    cfg_dir = _tiny_config_dir(tmp_path, [STAGE2])
    out = tmp_path / "one"
    assert main(["pretrain", "toy", "--only", "base", "--out", str(out), "--config-dir", str(cfg_dir)]) == 0
    first = tiny_cfg("save_every=0")
    base.run(tmp_path / "s1", first)
    second = tiny_cfg("save_every=0", "steps=3", "lr=5e-4", "warmup_steps=1", "prompt_dropout=0.2",
                      f"init_from={tmp_path / 's1' / 'base'}")
    base.run(tmp_path / "s2", second)
    assert _weights(out / "base") == _weights(tmp_path / "s2" / "base")
    assert _weights(out / "base") != _weights(tmp_path / "s1" / "base")
    # the first stage's logs sit beside the final weights; the intermediate folder is gone
    for name in ("loss_log_stage1.jsonl", "metrics_stage1.json", "pretrain_config_stage1.yaml"):
        assert (out / "base" / name).is_file(), name
    losses = [[json.loads(line)["loss"] for line in path.read_text().splitlines()]
              for path in (out / "base" / "loss_log_stage1.jsonl", tmp_path / "s1" / "base" / base.LOSS_LOG)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert not (out / ".stages").exists()
    metrics = json.loads((out / "base" / "metrics.json").read_text())
    assert metrics["stages"] == 2 and len(metrics["stage_wall_s"]) == 2 and metrics["steps"] == 3
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["base"]["stages"] == 2 and summary["total_wall_s"] > 0
    # --stages 1 stops after the file's own settings
    assert main(["pretrain", "toy", "--only", "base", "--out", str(tmp_path / "first"), "--config-dir", str(cfg_dir),
                 "--stages", "1"]) == 0
    assert _weights(tmp_path / "first" / "base") == _weights(tmp_path / "s1" / "base")


def test_resume_reuses_a_finished_stage_after_a_crash(tmp_path, monkeypatch, capsys):
    cfg_dir = _tiny_config_dir(tmp_path, [STAGE2])
    clean = tmp_path / "clean"
    run_part("base", clean, [], False, cfg_dir)
    real_run = base.run
    calls = []

    def crash_in_stage_two(out_dir, cfg):
        calls.append(cfg.steps)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_run(out_dir, cfg)

    monkeypatch.setattr(base, "run", crash_in_stage_two)
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="killed"):
        run_part("base", out, [], False, cfg_dir)
    assert (out / ".stages" / "base" / "stage1" / "base" / "metrics.json").is_file()
    monkeypatch.setattr(base, "run", real_run)
    capsys.readouterr()
    # the CLI resumes without --overwrite: the stage-1 folder is finished, the final one was never written
    assert main(["pretrain", "toy", "--only", "base", "--out", str(out), "--config-dir", str(cfg_dir), "--resume"]) == 0
    assert "stage 1/2: reusing" in capsys.readouterr().out
    assert _weights(out / "base") == _weights(clean / "base")
    assert not (out / ".stages").exists()
    # a finished part still needs --overwrite, even with --resume
    assert main(["pretrain", "toy", "--only", "base", "--out", str(out), "--config-dir", str(cfg_dir), "--resume"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # a stage saved with other settings is not reused
    calls.clear()
    monkeypatch.setattr(base, "run", crash_in_stage_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_part("base", tmp_path / "again", [], False, cfg_dir)
    monkeypatch.setattr(base, "run", real_run)
    capsys.readouterr()
    run_part("base", tmp_path / "again", ["grad_clip=0.5"], True, cfg_dir, resume=True)
    assert "reusing" not in capsys.readouterr().out


def test_stage_errors_name_the_stage(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    bad_key = _tiny_config_dir(tmp_path / "a", [{"stepz": 3}])
    with pytest.raises(PixprefError, match=r"pretrain_base.yaml stage 2: unknown config key 'stepz'.*did you mean 'steps'"):
        stage_configs("base", [], bad_key)
    (tmp_path / "b").mkdir()
    chained = _tiny_config_dir(tmp_path / "b", [{"init_from": "elsewhere"}])
    with pytest.raises(PixprefError, match="stage 2: do not set init_from"):
        stage_configs("base", [], chained)
    assert main(["pretrain", "toy", "--out", str(tmp_path / "o"), "--set", "base.stages=[]"]) == 2
    assert "--stages N" in capsys.readouterr().err
    assert main(["pretrain", "toy", "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert main(["pretrain", "toy", "--out", str(tmp_path / "o"), "--only", "base", "--config-dir", str(bad_key)]) == 2
    assert "stage 2" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_parallel_jobs_train_parts_in_separate_processes(tmp_path):
    """--jobs 2: base and clip in two processes; the same weights as one process, a log per part."""
    cfg_dir = _tiny_config_dir(tmp_path, [])
    clip_sets = ["steps=2", "batch_size=8", "train_scenes=32", "eval_images=12", "log_every=1", "warmup_steps=1"]
    sets = [x for item in clip_sets for x in ("--set", f"clip.{item}")]
    out = tmp_path / "par"
    assert main(["pretrain", "toy", "--only", "base,clip", "--jobs", "2", "--out", str(out),
                 "--config-dir", str(cfg_dir), *sets]) == 0
    base.run(tmp_path / "seq", tiny_cfg("save_every=0"))
    assert _weights(out / "base") == _weights(tmp_path / "seq" / "base")
    assert (out / "clip" / "model.safetensors").is_file()
    assert (out / "logs" / "base.log").stat().st_size > 0 and (out / "logs" / "clip.log").is_file()
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert set(summary) >= {"base", "clip", "total_wall_s"} and summary["jobs"] == 2
