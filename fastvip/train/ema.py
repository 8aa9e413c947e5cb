"""Exponential moving average of a model's weights (also the Mean Teacher's teacher)."""
from __future__ import annotations

import copy

import torch


class EMA:
    """A frozen copy of ``model`` whose floating-point tensors track ``model`` with ``decay``.

    With ``warmup`` the effective decay is ``min(decay, (1 + step) / (10 + step))``, so the
    average is not dominated by the random initial weights in short runs.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int, skip: torch.Tensor | None = None) -> None:
        """Move toward ``model``'s weights; ``skip`` (a 0/1 device tensor: the step was skipped
        for a NaN/inf loss) leaves the floating-point state as it was, without a host read."""
        d = self.decay_at(step)
        floats_e, floats_m = [], []
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                floats_e.append(e)
                floats_m.append(m.detach())
            else:
                e.copy_(m)  # integer buffers (BatchNorm's num_batches_tracked) are copied
        if skip is None:
            torch._foreach_lerp_(floats_e, floats_m, 1.0 - d)
            return
        step_ = torch._foreach_sub(floats_m, floats_e)  # e += (m - e) * (1 - d) * (1 - skip)
        torch._foreach_mul_(step_, (1.0 - d) * (1.0 - skip))
        torch._foreach_add_(floats_e, step_)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
