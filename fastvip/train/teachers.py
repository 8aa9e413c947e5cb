"""Teachers for distillation: trained runs whose averaged probabilities the model learns from.

Each teacher is the weights ``fastvip predict`` uses by default (a run directory's ``best.pt``,
or a checkpoint file), in eval mode without gradients, in its own memory format, and sees the
student's augmented batch (after crops, AutoAugment, CutMix or Mixup), resized on the device to
its own ``eval_size`` when that differs. Class lists must match. A checkpoint records each
teacher by path and digest; ``--resume`` refuses a teacher that changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvip import recipe as recipe_mod
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.methods.model import (build_model, file_digest, find_weights, inference_weights, load_checkpoint,
                                   use_channels_last)
from fastvip.recipe import Recipe


@dataclass
class Teacher:
    path: str
    digest: str
    module: torch.nn.Module
    channels_last: bool
    size: int  # the resolution it was validated at

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.module(x.contiguous(memory_format=fmt))


def load_teachers(recipe: Recipe, device: torch.device, num_classes: int, classes: list[str] | None = None,
                  console: Console | None = None) -> list[Teacher]:
    """The recipe's teachers on ``device``; a missing, damaged or mismatched one is a one-line error."""
    console = console or Console(quiet=True)
    return [_load(path, recipe, device, num_classes, classes, console) for path in recipe.teachers]


def _load(path: str, recipe: Recipe, device: torch.device, num_classes: int, classes: list[str] | None,
          console: Console) -> Teacher:
    if not Path(path).exists():
        raise FastvipError(f"teacher {path} does not exist (a run directory or checkpoint file)")
    try:
        ckpt_path = find_weights(path, "best")
        ckpt = load_checkpoint(ckpt_path)
        digest = file_digest(ckpt_path)
    except FastvipError as e:
        raise FastvipError(f"teacher {path}: {e}") from None
    theirs = ckpt.get("classes") or []
    if len(theirs) != num_classes or (classes is not None and list(theirs) != list(classes)):
        raise FastvipError(f"teacher {path} was trained on {len(theirs)} classes that differ from the "
                           f"model's {num_classes}; a teacher needs the same class list")
    trecipe = recipe_mod.from_dict(ckpt["recipe"])
    weights, which = inference_weights(ckpt)
    module = build_model(trecipe, num_classes)
    module.load_state_dict(weights)
    channels_last, _ = use_channels_last(trecipe, device)
    module = module.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    module.eval().requires_grad_(False)
    size = recipe_mod.eval_resolution(trecipe)
    resized = f", the batch resized to {size} px on the device" if size != recipe_mod.eval_resolution(recipe) else ""
    console.log(f"run: teacher {path}: {trecipe.model}, {which} weights of {ckpt_path.name}{resized}")
    return Teacher(str(path), digest, module, channels_last, size)


def teacher_records(teachers: list[Teacher]) -> list[dict]:
    """How a checkpoint records its teachers."""
    return [{"path": t.path, "digest": t.digest} for t in teachers]


def check_unchanged(teachers: list[Teacher], recorded: list[dict] | None) -> None:
    """``--resume`` with the teachers the checkpoint was trained with, or a one-line refusal."""
    if recorded is None:
        return
    for t, saved in zip(teachers, recorded):
        if t.digest != saved["digest"]:
            raise FastvipError(f"--resume: teacher {t.path} changed since the checkpoint (digest {t.digest[:12]} "
                               f"against {saved['digest'][:12]}); restore it, or start a new run")
