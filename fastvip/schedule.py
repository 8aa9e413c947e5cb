"""Learning-rate schedules as pure functions of the optimiser step."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float,
          warmup_lr: float = 0.0, min_lr: float = 0.0) -> float:
    """Linear warmup from ``warmup_lr`` to ``peak`` over ``warmup_steps``, then per-step cosine to ``min_lr``.

    Step ``warmup_steps - 1`` is the first at ``peak``, so no step is spent at exactly ``warmup_lr``.
    """
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * t))
