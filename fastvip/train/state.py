"""The run's progress as one small dataclass, saved whole in every checkpoint, and the RNG states."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RunState:
    """Where a run is: what ``--resume`` needs besides weights and optimiser state.

    ``mid_epoch`` is set only in a checkpoint written inside an epoch (a stop or the timer):
    ``steps`` done of epoch ``epoch`` + 1, their device-side counts and loss sums, seconds spent.
    """

    epoch: int = 0                 # whole epochs done
    step: int = 0                  # optimiser steps done (the schedules' clock)
    best: dict = field(default_factory=lambda: {"top1": None, "epoch": None, "weights": None})
    last: dict = field(default_factory=dict)  # the declared weights at the latest validated epoch
    nonfinite: int = 0             # NaN/inf steps skipped so far (max_nonfinite_steps)
    rates: list = field(default_factory=list)  # train img/s of each epoch (one process)
    mid_epoch: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "RunState":
        """The state a checkpoint holds; older checkpoints kept its parts as
        top-level keys, before this class existed (no skipped-step count or rates: those start at 0)."""
        if "run_state" in ckpt:
            return cls(**ckpt["run_state"])
        return cls(epoch=ckpt["epoch"], step=ckpt["step"], best=ckpt["best"], last=ckpt.get("last", {}),
                   mid_epoch=ckpt.get("mid_epoch"))


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values (checkpoints load with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
