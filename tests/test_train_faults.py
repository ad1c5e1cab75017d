"""Fault injection: SIGKILL a PPD training run at random moments (one of them inside a checkpoint write),
resume with ``--resume latest`` each time, and check the final adapter equals an uninterrupted run's.

The longer version (more kills, longer run) is ``python scripts/fault_inject.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ppd_fixtures import REPO, TINY_CONFIG, TRAIN_SCRIPT, make_assets, tiny_overrides
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO)}
STEPS = 6


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("fault_assets"))


def _cmd(assets, out, resume: bool):
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(assets, out, max_steps=STEPS, checkpoint_every=1,
                                                          user_dropout=0.5)]
    return [sys.executable, str(TRAIN_SCRIPT), *args, *(["--resume", "latest"] if resume else [])]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "user_adapter.safetensors"))


def _logged_step(out: Path) -> int:
    """The last step in the run's train_log.jsonl (0 if none yet)."""
    import json

    path = out / "train_log.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (ValueError, KeyError):  # a line being written
        return 0


def run_with_kills(assets, out: Path, kills: int, seed: int, env=ENV) -> dict:
    """Run to the end, SIGKILLing ``kills`` times; the first kill lands inside a checkpoint write."""
    rng = random.Random(seed)
    survived, resumes = 0, 0
    for attempt in range(kills + 20):
        pause = attempt == 0
        run_env = {**env, "PIXPREF_FAULT_CHECKPOINT_PAUSE": "3"} if pause else env
        proc = subprocess.Popen(_cmd(assets, out, resume=attempt > 0), env=run_env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        resumes += attempt > 0
        if survived < kills:
            if pause:  # wait for a half-written checkpoint folder, then kill inside the write
                deadline = time.time() + 120
                while time.time() < deadline and not list((out / "checkpoints").glob(".tmp_checkpoint_*")):
                    if proc.poll() is not None:
                        break
                    time.sleep(0.05)
            else:  # a random moment mid-run: after a random step has been logged, plus up to 0.5 s
                done = _logged_step(out)
                target = rng.randint(done + 1, STEPS - 1) if done + 1 <= STEPS - 1 else STEPS - 1
                deadline = time.time() + 120
                while time.time() < deadline and proc.poll() is None and _logged_step(out) < target:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                survived += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        if (out / "adapter" / "user_adapter.safetensors").is_file():
            return {"kills": survived, "resumes": resumes}
    raise AssertionError("the run never finished")


def test_sigkill_resume_gives_the_uninterrupted_adapter(assets, tmp_path):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    res = subprocess.run(_cmd(assets, clean, resume=False), env=ENV, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = run_with_kills(assets, faulty, kills=3, seed=0)
    assert stats["kills"] >= 2, stats  # at least the checkpoint-write kill and one random kill landed
    a, b = _adapter(clean), _adapter(faulty)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ckpts = faulty / "checkpoints"
    assert not list(ckpts.glob(".tmp_*")), "a half-written checkpoint was left behind"
    assert all((c / "step.json").is_file() for c in ckpts.iterdir())


def test_killed_generate_leaves_no_half_written_file(tmp_path):
    """SIGKILL `pixpref generate` at random moments: every file in the output folder is complete."""
    from PIL import Image

    rng = random.Random(1)
    for attempt in range(3):
        out = tmp_path / f"gen{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "pixpref.cli", "generate", "--prompt", "a red star",
                                 "--num-images", "48", "--steps", "4", "--out", str(out)], env=ENV, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120  # kill once the first image is on disk, a random moment later
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*.png")):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.01))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files = list(out.iterdir()) if out.exists() else []
        assert not [f.name for f in files if f.name.startswith(".") or f.suffix == ".tmp"], files
        for f in files:
            if f.suffix == ".png":
                with Image.open(f) as im:
                    im.load()  # a truncated PNG raises here
