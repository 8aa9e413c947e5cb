"""Stage 4, training: ``fastvip run`` and the step it repeats.

The public step API lives here, whichever module of this package defines it:
:func:`run` (:mod:`~fastvip.train.loop`), :func:`build_trainer` (:mod:`~fastvip.train.trainer`,
the one set-up), :func:`build_optimizer` and :func:`optimizer_impl` (:mod:`~fastvip.train.optim`),
:class:`StepContext`, :func:`prepare_batch`, :func:`train_step`, :func:`skips_on_device`
(:mod:`~fastvip.train.step`).
"""
from fastvip.train.loop import run
from fastvip.train.optim import OPTIMIZER_IMPL_KWARGS, build_optimizer, optimizer_impl
from fastvip.train.step import StepContext, other_view, prepare_batch, skips_on_device, train_step
from fastvip.train.trainer import Trainer, build_trainer

__all__ = ["run", "build_trainer", "Trainer", "build_optimizer", "optimizer_impl", "OPTIMIZER_IMPL_KWARGS",
           "StepContext", "prepare_batch", "other_view", "train_step", "skips_on_device"]
