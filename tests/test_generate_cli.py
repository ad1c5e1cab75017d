"""``pixpref generate``: PNGs + grid, same seed -> same images, bad input -> exit 2 naming valid options."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from pixpref.cli import main
from pixpref.pretrain.base import ModelArch, PretrainConfig, build_pipeline


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained tiny toy pipeline folder (fast to sample)."""
    cfg = PretrainConfig(steps=2, warmup_steps=0, model=ModelArch(
        block_out_channels=[16, 32], cross_attention=[False, True], text_hidden_size=32, text_layers=1, text_heads=2))
    folder = tmp_path_factory.mktemp("models") / "tiny"
    build_pipeline(cfg).save_pretrained(folder)
    return folder


def pngs(folder) -> np.ndarray:
    files = sorted(p for p in folder.glob("[0-9][0-9][0-9].png"))
    return np.stack([np.asarray(Image.open(p)) for p in files])


def gen(out, model, *extra) -> int:
    return main(["generate", "--prompt", "a red star", "--num-images", "3", "--steps", "3", "--out", str(out),
                 "--model", str(model), *extra])


def test_generate_writes_images_and_is_seeded(tmp_path, tiny_model):
    assert gen(tmp_path / "a", tiny_model, "--seed", "0") == 0
    a = pngs(tmp_path / "a")
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert (tmp_path / "a" / "grid.png").is_file()
    settings = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert settings["steps"] == 3 and settings["seed"] == 0 and settings["scheduler"] == "DDIMScheduler"
    assert gen(tmp_path / "b", tiny_model, "--seed", "0") == 0
    np.testing.assert_array_equal(a, pngs(tmp_path / "b"))
    assert gen(tmp_path / "c", tiny_model, "--seed", "1") == 0
    assert not np.array_equal(a, pngs(tmp_path / "c"))
    # existing output: refused without --overwrite, replaced with it
    assert gen(tmp_path / "a", tiny_model, "--seed", "1") == 2
    assert gen(tmp_path / "a", tiny_model, "--seed", "1", "--overwrite") == 0
    np.testing.assert_array_equal(pngs(tmp_path / "a"), pngs(tmp_path / "c"))


@pytest.mark.parametrize("scheduler", ["ddpm", "euler", "dpm"])
def test_generate_other_schedulers(tmp_path, tiny_model, scheduler):
    assert gen(tmp_path / scheduler, tiny_model, "--scheduler", scheduler, "--guidance-scale", "1.5") == 0
    assert pngs(tmp_path / scheduler).shape == (3, 32, 32, 3)


@pytest.mark.parametrize("args,message", [
    (["--prompt", "  "], "--prompt is empty"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--num-images", "0"], "--num-images must be >= 1"),
    (["--guidance-scale", "0.5"], "--guidance-scale must be >= 1"),
    (["--model", "sd3"], "valid options: toy, sd15, sdxl"),
])
def test_generate_bad_input_exits_2(tmp_path, capsys, tiny_model, args, message):
    argv = ["generate", "--prompt", "a red star", "--out", str(tmp_path / "o"), "--model", str(tiny_model), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_generate_unknown_scheduler_lists_choices(tmp_path, capsys, tiny_model):
    with pytest.raises(SystemExit) as exc:
        gen(tmp_path / "o", tiny_model, "--scheduler", "lms")
    assert exc.value.code == 2
    assert "'ddim', 'ddpm', 'euler', 'dpm'" in capsys.readouterr().err


def test_generate_from_shipped_toy_model_console_script(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pixpref", "generate", "--prompt", "a blue circle", "--num-images", "2",
           "--steps", "4", "--seed", "0", "--out", str(tmp_path / "toy")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert pngs(tmp_path / "toy").shape == (2, 32, 32, 3)
