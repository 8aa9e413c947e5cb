"""The one set-up of a training step: model, optimiser, grad scaler, EMA and step context.

``fastvip run``, ``benchmarks/throughput.py`` and the tests all build what they train with
:func:`build_trainer`, so each of them times and tests the step the run takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.methods.model import (amp_dtype, build_model, find_weights, inference_weights, load_checkpoint,
                                   use_channels_last)
from fastvip.methods.net import adapt_init_weights
from fastvip.recipe import Recipe
from fastvip.train.ema import EMA
from fastvip.train.optim import align_state_to_params, build_optimizer
from fastvip.train.step import StepContext, skips_on_device
from fastvip.train.teachers import Teacher, check_unchanged, load_teachers, teacher_records


@dataclass
class Trainer:
    """The model and what updates it, as :func:`build_trainer` makes them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    amp: torch.dtype | None
    channels_last: bool
    channels_last_why: str
    forward: torch.nn.Module | None = None  # what the step calls: the model, DDP-wrapped and compiled as asked
    ctx: StepContext | None = None
    teachers: list[Teacher] = field(default_factory=list)

    def state_dict(self) -> dict:
        """The checkpoint entries of the weights and what updates them."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "channels_last": self.channels_last, "teachers": teacher_records(self.teachers)}

    def load_state_dict(self, ckpt: dict) -> None:
        """Weights, optimiser, scaler and EMA from a checkpoint, in this trainer's memory format
        whatever the checkpoint's (the strides of every optimiser buffer follow its parameter)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        align_state_to_params(self.optimizer)
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])


def build_trainer(recipe: Recipe, device: torch.device, num_classes: int, console: Console | None = None,
                  fresh: bool = True, world: int = 1, *, rank: int = 0, augmented: bool = False,
                  checkpoint: dict | None = None, classes: list[str] | None = None) -> Trainer:
    """Everything a step needs, from a recipe and a device.

    A fresh model in the recipe's memory format (``checkpoint``: resumed from it; else, with
    ``fresh``, initialised from ``recipe.init_from``), its optimiser, grad scaler and EMA, the
    module the step calls (DDP-wrapped when ``world`` > 1, compiled when the recipe says) and
    the step context, with the recipe's distillation teachers (``classes``: the names they must
    match). ``augmented``: the loader already applied ``auto_augment``."""
    console = console or Console(quiet=True)
    amp = amp_dtype(recipe.amp, device)
    channels_last, why = use_channels_last(recipe, device)
    model = build_model(recipe, num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.init_from and fresh and checkpoint is None:
        _init_weights(model, recipe, console)
    if recipe.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, recipe, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    ema = EMA(model, recipe.ema_decay) if recipe.uses_ema else None
    with torch.random.fork_rng(devices=[]):  # the teachers' throw-away init draws nothing from the run's RNG
        teachers = load_teachers(recipe, device, num_classes, classes, console)
    trainer = Trainer(model, optimizer, scaler, ema, amp, channels_last, why, teachers=teachers)
    if checkpoint is not None:
        check_unchanged(teachers, checkpoint.get("teachers"))
        trainer.load_state_dict(checkpoint)
        saved = checkpoint.get("channels_last")  # absent in checkpoints written before it was recorded
        if saved is not None and saved != channels_last:
            console.log(f"run: checkpoint written channels-last {'on' if saved else 'off'}, resumed "
                        f"{'on' if channels_last else 'off'} ({why}); weights and optimiser state converted")
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    trainer.forward = torch.compile(wrapped) if recipe.compile else wrapped
    trainer.ctx = StepContext(recipe, device, amp, num_classes, augmented, channels_last, rank=rank, world=world,
                              teacher=ema.module if recipe.mt_weight > 0 else None,
                              no_sync=wrapped.no_sync if world > 1 else None,
                              skip_on_device=skips_on_device(recipe, device, amp), teachers=teachers)
    return trainer


def _init_weights(model, recipe: Recipe, console: Console) -> None:
    """Weights only from ``init_from`` (stage 2, fine-tunes); heads may differ (see
    :func:`fastvip.methods.net.adapt_init_weights`). Optimiser and schedule start fresh."""
    path = Path(recipe.init_from)
    if not path.exists():
        first = f"; train it first: fastvip run {recipe.init_recipe}" if recipe.init_recipe else \
            "; train the recipe it names first"
        raise FastvipError(f"init_from {recipe.init_from} does not exist{first}")
    weights, which = inference_weights(load_checkpoint(find_weights(path, "best")))
    try:
        state, fresh = adapt_init_weights(model, weights)
    except FastvipError as e:
        raise FastvipError(f"init_from {recipe.init_from}: {e}") from None
    model.load_state_dict(state)
    console.log(f"run: initialised from {recipe.init_from} ({which} weights"
                + (f"; new: {', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh}))}" if fresh else "") + ")")
