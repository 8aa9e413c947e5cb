"""CutMix and Mixup on a normalized batch on the device, with soft targets.

One decision per batch (as timm's ``Mixup`` in batch mode): with probability
``prob`` the batch is mixed, by CutMix or Mixup (``switch_prob`` picks CutMix when
both are enabled); ``lam`` ~ Beta(alpha, alpha); every image gets a partner from a
seeded permutation. Targets are mixed linearly, so smoothed one-hot targets and
mixing compose: the loss is a soft-target cross-entropy.

CutMix pastes one box (side ``sqrt(1 - lam)`` of the image's, centre uniform,
clipped at the border) and ``lam`` is recomputed from the area actually pasted.

Two-view batches (rows ``i`` and ``i + n`` are views of one image): both views
take the same partner, ``lam`` and box, so the two views of an image keep
identical soft labels and stay instance-level positives after mixing.

For the losses that need one class per sample (triplet, ArcFace) the *dominant*
label is used: the image's own label when ``lam >= 0.5``, else its partner's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Mix:
    kind: str                 # "none", "cutmix" or "mixup"
    lam: float                # weight of each image's own content (true pasted area for CutMix)
    partner: torch.Tensor     # (N,) row index of each row's partner
    box: tuple[int, int, int, int] | None = None  # CutMix (y0, y1, x0, x1)


def draw_mix(rng: np.random.Generator, n_images: int, views: int, height: int, width: int, *,
             prob: float, cutmix_alpha: float, mixup_alpha: float, switch_prob: float,
             generator: torch.Generator, device) -> Mix:
    """The mixing of one batch of ``n_images * views`` rows (scalars from ``rng``, the
    permutation from ``generator``)."""
    rows = n_images * views
    identity = torch.arange(rows, device=device)
    use_cutmix, use_mixup = cutmix_alpha > 0, mixup_alpha > 0
    if prob <= 0 or not (use_cutmix or use_mixup) or rng.random() >= prob:
        return Mix("none", 1.0, identity)
    cutmix = use_cutmix and (not use_mixup or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if cutmix else rng.beta(mixup_alpha, mixup_alpha))
    perm = torch.randperm(n_images, generator=generator, device=generator.device).to(device)
    partner = (perm[None, :] + n_images * torch.arange(views, device=device)[:, None]).reshape(-1)
    if not cutmix:
        return Mix("mixup", lam, partner)
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
    lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (height * width)
    return Mix("cutmix", lam, partner, (int(y0), int(y1), int(x0), int(x1)))


def apply_mix(mix: Mix, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed images and targets (the inputs are left untouched)."""
    if mix.kind == "none":
        return images, targets
    partner_t = targets[mix.partner]
    targets = mix.lam * targets + (1.0 - mix.lam) * partner_t
    if mix.kind == "mixup":
        return images.lerp(images[mix.partner], 1.0 - mix.lam), targets
    y0, y1, x0, x1 = mix.box
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images[mix.partner, :, y0:y1, x0:x1]
    return out, targets


def dominant_labels(mix: Mix, labels: torch.Tensor) -> torch.Tensor:
    """Each row's majority class: its own when ``lam >= 0.5``, else its partner's."""
    return labels if mix.lam >= 0.5 else labels[mix.partner]
