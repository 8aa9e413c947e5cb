"""Schedules as pure functions of the optimiser step (learning rate, Mean Teacher ramp-up) or of
the epoch (progressive resizing)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from fastvip.methods.losses import rampup
from fastvip.recipe import Recipe


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


def resolution_at(epoch: int, start_size: int, end_size: int, ramp_start: int, ramp_end: int,
                  multiple: int = 32) -> int:
    """Progressive resizing (FFCV's ImageNet recipes): ``start_size`` up to epoch ``ramp_start``,
    then linear in the epoch to ``end_size`` at ``ramp_end`` and after, sizes on the way rounded to a
    ``multiple`` and kept between the two ends. Epochs count from 0."""
    if epoch <= ramp_start:
        return start_size
    if epoch >= ramp_end:
        return end_size
    t = (epoch - ramp_start) / (ramp_end - ramp_start)
    size = int(round((start_size + t * (end_size - start_size)) / multiple)) * multiple
    lo, hi = sorted((start_size, end_size))
    return min(hi, max(lo, size))


def train_resolution(recipe: Recipe, epoch: int) -> int:
    """The train crop size of ``epoch`` (from 0): ``image_size``, or the progressive-resizing ramp."""
    if not recipe.res_start:
        return recipe.image_size
    return resolution_at(epoch, recipe.res_start, recipe.image_size, recipe.res_ramp_start, recipe.res_ramp_end,
                         recipe.res_multiple)


def max_train_resolution(recipe: Recipe) -> int:
    """The largest train crop over the schedule (what a train loader allocates for)."""
    return max(recipe.image_size, recipe.res_start)


@dataclass(frozen=True)
class Schedule:
    """A recipe's step schedules for a number of steps per epoch: warmup then cosine for the
    learning rate, and the Mean Teacher weight's ramp-up. Pure functions of the step."""

    total: int
    warmup: int
    rampup: int
    peak: float
    warmup_lr: float
    min_lr: float

    @classmethod
    def of(cls, recipe: Recipe, steps_per_epoch: int) -> "Schedule":
        return cls(total=recipe.epochs * steps_per_epoch, warmup=round(recipe.warmup_epochs * steps_per_epoch),
                   rampup=round(recipe.mt_rampup_epochs * steps_per_epoch), peak=recipe.scaled_lr(),
                   warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr)

    def lr(self, step: int) -> float:
        return lr_at(step, self.total, self.warmup, self.peak, self.warmup_lr, self.min_lr)

    def mt_ramp(self, step: int) -> float:
        return rampup(step, self.rampup)
