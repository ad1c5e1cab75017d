"""Training curves from ``train_log.jsonl`` files written by ``train/train_ppd.py``.

Each line is one logged step: ``{"step": 10, "wall": 5.7, "loss": 0.71, "implicit_acc": 0.72, ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixpref.errors import PixprefError

CURVE_KEYS = ("step", "wall", "loss", "implicit_acc", "reward_margin")


def read_train_log(path: str | Path) -> dict[str, list[float]]:
    """{key: values} for :data:`CURVE_KEYS` (keys a log lacks are left out; ``step`` is required)."""
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise PixprefError(f"{path} line {i} is not valid JSON: {e}") from None
    if not rows or any("step" not in r for r in rows):
        raise PixprefError(f"{path} is not a train_log.jsonl: every line needs a 'step'")
    return {k: [float(r[k]) for r in rows] for k in CURVE_KEYS if all(k in r for r in rows)}


def summarize(curves: dict[str, list[float]], tail: int = 5) -> dict[str, Any]:
    """Last step, wall-clock seconds, and the mean loss / implicit accuracy of the last ``tail`` log lines."""
    out: dict[str, Any] = {"logged": len(curves["step"]), "last_step": int(curves["step"][-1])}
    if "wall" in curves:
        out["wall_seconds"] = curves["wall"][-1]
        out["steps_per_second"] = curves["step"][-1] / curves["wall"][-1] if curves["wall"][-1] > 0 else None
    for key in ("loss", "implicit_acc"):
        if key in curves:
            values = curves[key][-tail:]
            out[f"final_{key}"] = sum(values) / len(values)
    return out


def load_train_logs(paths: dict[str, str]) -> tuple[dict[str, dict], list[str]]:
    """name -> {"path", "curves", "summary"} for each log that exists, and a note for each that does not."""
    logs, notes = {}, []
    for name, path in paths.items():
        if not Path(path).is_file():
            notes.append(f"training log {name!r} not found at {path}; its training curve is skipped")
            continue
        curves = read_train_log(path)
        logs[name] = {"path": str(path), "curves": curves, "summary": summarize(curves)}
    return logs, notes
