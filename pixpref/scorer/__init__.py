"""pixpref.scorer: the multi-dimensional preference scorer (MPS-style, plus a personal dimension).

    from pixpref.scorer import PreferenceScorer
    scorer = PreferenceScorer.from_pretrained("toy")
    scorer.score(images, "a red circle")   # {"aesthetics": (N,), "alignment": (N,), "detail": (N,), "overall": (N,)}

Files: ``conditions.py`` (dimension names, condition words), ``model.py`` (ScorerConfig, ScorerModel,
pairwise_loss), ``api.py`` (PreferenceScorer), ``cli.py`` (``pixpref score``). Torch is imported only when
one of the classes below is first used.
"""

from __future__ import annotations

from typing import Any

from pixpref.scorer.conditions import ALL_DIMENSIONS, PERSONAL, TEXT_DIMENSIONS

_LAZY = {
    "PreferenceScorer": "pixpref.scorer.api",
    "WinRate": "pixpref.scorer.api",
    "ScorerConfig": "pixpref.scorer.model",
    "ScorerModel": "pixpref.scorer.model",
    "pairwise_loss": "pixpref.scorer.model",
    "pairwise_accuracy": "pixpref.scorer.model",
}

__all__ = ["ALL_DIMENSIONS", "PERSONAL", "TEXT_DIMENSIONS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixpref.scorer' has no attribute {name!r}")
