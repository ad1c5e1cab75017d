"""End-to-end runs of ``train/train_ppd.py`` on tiny random models (pixel-space PixprefPipeline, tiny LLaVA,
Pick-a-Pic parquet), each in a subprocess: accelerate allows one Accelerator per process."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ppd_fixtures import REPO, TINY_CONFIG, TRAIN_SCRIPT, make_assets, tiny_overrides
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("ppd_assets"))


@pytest.fixture(scope="module")
def cache(assets, tmp_path_factory):
    """A user-embedding cache made by one real run (the VLM path), shared by the later runs."""
    out = tmp_path_factory.mktemp("ppd_cache") / "run"
    res = _train(assets, out, max_steps=1)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "user_embeddings.safetensors"


def _train(assets, out, *extra, launch=None, user_cache=None, **train):
    cmd = [sys.executable, str(TRAIN_SCRIPT)] if launch is None else launch
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(assets, out, **train)]
    if user_cache is not None:
        args += ["--set", f"user.cache={user_cache}"]
    return subprocess.run([*cmd, *args, *extra], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "user_adapter.safetensors"))


def _script_main():
    """``main`` of train/train_ppd.py, imported from its path (a config error stops before the Accelerator)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_ppd", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("loss", ["dpo", "inpo"])
def test_runs_and_writes_everything(assets, cache, tmp_path, loss):
    out = tmp_path / "run"
    res = _train(assets, out, user_cache=cache, loss=loss, max_steps=3, checkpoint_every=2,
                 validate_every=3 if loss == "dpo" else 0)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "config.yaml").is_file()
    split = json.loads((out / "split.json").read_text())
    assert split["unseen_users"] and not set(split["unseen_users"]) & set(split["seen_users"])
    log = _log(out)
    assert [e["step"] for e in log] == [1, 2, 3]
    assert all(math.isfinite(e["loss"]) and not e["skipped"] for e in log)
    assert abs(log[0]["loss"] - math.log(2)) < 1e-5  # zero-init adapter: policy == reference
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [json.loads((c / "step.json").read_text())["step"] for c in ckpts] == [2, 3]
    # the adapter trained: it differs from the step-0 init (zero value projections)
    final = _adapter(out / "adapter")
    v_keys = [k for k in final if k.endswith("to_v_user.weight")]
    assert v_keys and all(final[k].abs().max() > 0 for k in v_keys)
    if loss == "dpo":
        pngs = list((out / "validation").glob("*.png"))
        assert len(pngs) == 1 and pngs[0].stat().st_size > 0


def test_oracle_pairs_source_reads_each_chunks_own_pairs(assets, tmp_path):
    """user.source=oracle_pairs: each chunk's embedding is the pixel oracle's contrast of its own k pairs."""
    from pixpref.toyworld.users import basis_names

    out = tmp_path / "run"
    res = _train(assets, out, "--set", "user.source=oracle_pairs", max_steps=2, validate_every=0)
    assert res.returncode == 0, res.stderr[-3000:]
    spec = json.loads((out / "adapter" / "user_encoder.json").read_text())
    assert spec["source"] == "oracle_pairs"
    cache = load_file(str(out / "user_embeddings.safetensors"))
    assert cache and all(v.shape == (1, len(basis_names())) for v in cache.values())
    assert len({tuple(v.flatten().tolist()) for v in cache.values()}) > 1  # chunks differ
    assert all(torch.isfinite(v).all() for v in cache.values())


def test_resume_matches_uninterrupted_run(assets, cache, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    common = dict(user_cache=cache, checkpoint_every=2, user_dropout=0.5)  # dropout draws from the step seed too
    assert (res := _train(assets, a, max_steps=4, **common)).returncode == 0, res.stderr[-3000:]
    assert (res := _train(assets, b, max_steps=2, **common)).returncode == 0, res.stderr[-3000:]
    # without --resume an existing run is refused, not mixed with the new one (checked before any model loads)
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(assets, b, max_steps=4)]
    assert _script_main()(argv) == 2
    assert "pass --resume latest to continue it, --overwrite to replace it" in capsys.readouterr().err
    res = _train(assets, b, "--resume", "latest", max_steps=4, **common)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    wa, wb = _adapter(a / "adapter"), _adapter(b / "adapter")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)
    la, lb = _log(a), _log(b)
    assert [e["step"] for e in lb] == [1, 2, 3, 4]
    for ea, eb in zip(la, lb):
        assert ea["loss"] == pytest.approx(eb["loss"], abs=1e-6) and ea["lr"] == eb["lr"]
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["checkpoint_2", "checkpoint_4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes(assets, cache, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    launch = [accelerate, "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
              "--num_processes", "2", "--main_process_port", str(_free_port()), str(TRAIN_SCRIPT)]
    out = tmp_path / "run"
    res = _train(assets, out, launch=launch, user_cache=cache, max_steps=2, checkpoint_every=1,
                 gradient_accumulation_steps=2)
    assert res.returncode == 0, res.stderr[-3000:]
    log = _log(out)
    assert [e["step"] for e in log] == [1, 2] and all(math.isfinite(e["loss"]) for e in log)
    assert [e["lr"] for e in log] == [5e-4, 1e-3]  # warm-up counts optimizer steps, not steps x processes
    assert (out / "adapter" / "user_adapter.safetensors").is_file()
    assert len(list((out / "checkpoints").iterdir())) == 2


@pytest.mark.parametrize("override,expected", [
    ("train.lerning_rate=1e-4", ["unknown config key 'train.lerning_rate'", "valid keys", "lr", "beta"]),
    ("train.loss=ppo", ["unknown preference loss 'ppo'", "dpo, inpo, sft"]),
    ("train.timestep_max=0", ["train.timestep_min (0) must be >= 0 and below train.timestep_max"]),
])
def test_bad_config_exits_2_with_one_line(assets, tmp_path, capsys, override, expected):
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(assets, tmp_path / "run"), "--set", override]
    assert _script_main()(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_ppd: error:"), lines
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "run").exists()


def test_nonfinite_steps_are_skipped_then_abort(assets, cache, tmp_path):
    """lr 1e30 blows the adapter up after step 1; later steps are skipped and counted, then training stops."""
    out = tmp_path / "run"
    res = _train(assets, out, user_cache=cache, lr=1e30, warmup_steps=0, max_steps=6, max_nonfinite_steps=2)
    assert res.returncode == 2, res.stderr[-3000:]
    err = [line for line in res.stderr.splitlines() if line.startswith("train_ppd: error:")]
    assert len(err) == 1 and "2 non-finite losses or gradients in a row" in err[0] and "max_nonfinite_steps" in err[0]
    log = _log(out)
    assert [e["step"] for e in log] == [1, 2, 3]
    assert not log[0]["skipped"] and math.isfinite(log[0]["loss"])
    assert [e["skipped"] for e in log[1:]] == [True, True] and log[-1]["skipped_steps"] == 2
    assert "step 2: non-finite loss or gradient, step skipped" in res.stdout + res.stderr
    assert not (out / "adapter").exists()


def test_preference_head_trains_then_conditions_the_adapter(assets, tmp_path):
    """train/train_preference_head.py on the tiny VLM's readings, then train_ppd.py with pooling preference_head."""
    head_out = tmp_path / "head"
    cmd = [sys.executable, str(REPO / "train" / "train_preference_head.py"), "--config",
           str(REPO / "configs" / "toy" / "preference_head.yaml"), "--set", f"vlm={assets['vlm']}",
           "--set", f"data.path={assets['data']}", "--set", "data.image_size=16", "--set", "eval_data=",
           "--set", "readings_cache=", "--set", f"output_dir={head_out}", "--set", "train.steps=20",
           "--set", "train.val_every=10", "--set", "train.max_context=4", "--set", "train.queries=4",
           "--set", "train.val_fraction=0.34", "--set", "head.evidence_dim=6", "--set", "head.num_prototypes=4"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((head_out / "metrics.json").read_text())
    assert 0.0 <= metrics["val_acc_k4"] <= 1.0 and metrics["best_step"] in (10, 20)
    assert (head_out / "readings.safetensors").is_file()
    out = tmp_path / "run"
    res = _train(assets, out, "--set", "user.pooling=preference_head", "--set", f"user.head={head_out / 'preference_head'}",
                 max_steps=2, validate_every=0)
    assert res.returncode == 0, res.stderr[-3000:]
    spec = json.loads((out / "adapter" / "user_encoder.json").read_text())
    assert spec["pooling"] == "preference_head" and spec["head"] == str(head_out / "preference_head")
    cache = load_file(str(out / "user_embeddings.safetensors"))
    assert cache and all(v.shape == (1, 6) for v in cache.values())
