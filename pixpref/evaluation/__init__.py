"""Evaluation reports of personalized models: ``pixpref eval`` and :func:`evaluate`.

    from pixpref.config import load_config
    from pixpref.evaluation import EvalConfig, evaluate
    report = evaluate(load_config("configs/eval/toy.yaml", EvalConfig), out="runs/eval_toy")

Modules: ``config`` (what to measure), ``examples`` (unseen users and their few-shot examples), ``judges``
(oracle and scorer verdicts), ``train_logs``, ``report`` (runs it all, writes the folder), ``plots``,
``markdown``, ``cli``.
"""

from __future__ import annotations

from typing import Any

from pixpref.evaluation.config import EvalConfig


def evaluate(config: EvalConfig, **kwargs: Any) -> dict[str, Any]:
    """Run the report described by ``config`` (see :func:`pixpref.evaluation.report.evaluate`)."""
    from pixpref.evaluation.report import evaluate as _evaluate

    return _evaluate(config, **kwargs)


__all__ = ["EvalConfig", "evaluate"]
