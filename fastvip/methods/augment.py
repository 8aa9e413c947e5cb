"""Batched pixel operations on the training device, kept apart from I/O.

Loaders deliver ``uint8`` NCHW batches (already cropped and flipped); these
functions run on whole batches on the GPU (or CPU).
"""
from __future__ import annotations

import torch


IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


_CONSTANTS: dict = {}


def _constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1 / std) as (1, C, 1, 1) tensors on ``device``, made once: a tensor built from
    Python numbers on a GPU is a blocking copy, which a training step must not make (nor the
    first one: on a GPU they are copied from pinned memory, without a host wait)."""
    key = (mean, std, str(device))
    if key not in _CONSTANTS:
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if device.type == "cuda":
            mean_t, inv_std = (t.pin_memory().to(device, non_blocking=True) for t in (mean_t, inv_std))
        _CONSTANTS[key] = (mean_t.to(device), inv_std.to(device))
    return _CONSTANTS[key]


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              channels_last: bool = False) -> torch.Tensor:
    """``uint8`` NCHW -> float32 ``(x - mean) / std`` in the memory format the model wants."""
    mean_t, inv_std = _constants(tuple(mean), tuple(std), images.device)
    out = (images.float() - mean_t) * inv_std
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return out.contiguous(memory_format=fmt)
