"""Learning-rate schedule shared by the toy pretraining scripts."""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup_steps: int, steps: int, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    frac = (step - warmup_steps) / max(1, steps - warmup_steps)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
