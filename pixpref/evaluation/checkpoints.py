"""Win rate against training step and wall-clock, from the checkpoints a training run kept.

    runs = checkpoint_adapters("runs/ppd_dpo")        # [(100, Path(".../checkpoint_100/user_adapter")), ...]
    steps_to_target([100, 200, 300], [0.55, 0.62, 0.70], 0.6)   # -> 200

``train/train_ppd.py`` writes ``checkpoints/checkpoint_<step>/user_adapter`` (with ``step.json`` once the
checkpoint is complete); keep them all with ``--set train.checkpoints_total_limit=100``. The wall-clock of a
step comes from the run's ``train_log.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixpref.errors import PixprefError


def checkpoint_adapters(run_dir: str | Path, steps: list[int] | None = None) -> list[tuple[int, Path]]:
    """(step, adapter folder) of every complete checkpoint of a training run, by step (only ``steps`` if given;
    steps the run did not keep are skipped)."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    if not root.is_dir():
        raise PixprefError(f"{run_dir} has no checkpoints/ folder; is it the output_dir of train/train_ppd.py?")
    found = []
    for folder in root.glob("checkpoint_*"):
        step = folder.name.split("_")[-1]
        adapter = folder / "user_adapter"
        if step.isdigit() and (folder / "step.json").is_file() and (adapter / "adapter_config.json").is_file():
            if steps is None or int(step) in steps:
                found.append((int(step), adapter))
    if not found:
        wanted = "" if steps is None else f" at steps {sorted(steps)}"
        raise PixprefError(f"{root} holds no complete checkpoint{wanted} (checkpoint_<step>/step.json and "
                           "user_adapter/)")
    return sorted(found)


def wall_at(curves: dict[str, list[float]], step: int) -> float | None:
    """Wall-clock seconds at ``step``, linearly interpolated between logged steps (None without a wall log)."""
    steps, walls = curves.get("step"), curves.get("wall")
    if not steps or not walls:
        return None
    if step <= steps[0]:
        return walls[0] * step / steps[0] if steps[0] > 0 else walls[0]
    for (s0, w0), (s1, w1) in zip(zip(steps, walls), zip(steps[1:], walls[1:])):
        if s0 <= step <= s1:
            return w0 + (w1 - w0) * (step - s0) / (s1 - s0) if s1 > s0 else w1
    return walls[-1] * step / steps[-1]  # past the log's end: extrapolate at the run's mean rate


def steps_to_target(steps: list[int], rates: list[float], target: float) -> int | None:
    """The first checkpoint step whose win rate reaches ``target`` (None if none does)."""
    if len(steps) != len(rates):
        raise PixprefError(f"{len(steps)} steps but {len(rates)} win rates")
    for step, rate in sorted(zip(steps, rates)):
        if rate >= target:
            return int(step)
    return None


def target_summary(curves: dict[str, dict[str, Any]], target: float) -> dict[str, Any]:
    """Steps and wall-clock each run needs to reach ``target``, and their ratios to the first run's.

    curves: name -> {"step": [...], "win_rate": [...], "wall": [... or None]}.
    """
    runs: dict[str, dict[str, Any]] = {}
    for name, c in curves.items():
        step = steps_to_target(c["step"], c["win_rate"], target)
        wall = None
        if step is not None and c.get("wall"):
            wall = c["wall"][c["step"].index(step)]
        runs[name] = {"steps": step, "wall_seconds": wall, "best_win_rate": max(c["win_rate"]),
                      "last_step": max(c["step"])}
    out: dict[str, Any] = {"target": target, "runs": runs, "reference": next(iter(curves), None), "ratios": {}}
    ref = runs.get(out["reference"]) if out["reference"] else None
    for name, r in runs.items():
        if ref is None or name == out["reference"]:
            continue
        ratio: dict[str, Any] = {"steps": None, "wall": None}
        if r["steps"] is not None and ref["steps"]:
            ratio["steps"] = r["steps"] / ref["steps"]
        if r["wall_seconds"] is not None and ref["wall_seconds"]:
            ratio["wall"] = r["wall_seconds"] / ref["wall_seconds"]
        out["ratios"][f"{name}/{out['reference']}"] = ratio
    return out
