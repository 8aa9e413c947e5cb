"""Test-time augmentation: every view cut on the device, in batches, from one decode per image.

The loader delivers each image whole, in the corner of a zero canvas
(``fastvip.loaders.ffcv.CanvasDecoder``). A view is a crop box in image pixels plus an
output size and a mirror flag. :func:`plan` lists the views of a TTA mode, and
:func:`cut` extracts one view for a whole batch with ``torchvision.ops.roi_align``.
Its adaptive sampling averages several bilinear samples per output pixel, like an
area resize when shrinking. The prediction is the mean of the views' probabilities.

- ``flip``: the eval centre crop and its mirror image.
- ``multiscale`` (DeepBlueAI 2020): at each scale s, (a) the centre crop of 0.875 x the
  shorter side (= resize the shorter side to s/0.875, centre-crop s) and (b) a seeded
  random crop of 80-100 % of the area (ratio 3/4-4/3), each with its mirror image.
  Scales: the recipe's ``tta_scales`` (the DeepBlueAI recipes: 224, 320, 380, 448, as the
  report tests every model), else the training size x (1, 320/224, 380/224, 448/224).
- ``tencrop`` (2021 report): after resizing the shorter side to S/0.875, the four corner
  crops and the centre crop of side S, and their mirror images; S = the recipe's
  ``tencrop_size`` (the 2021 recipes: 448, as the report), else 2 x the training size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastvip.loaders.keyed import epoch_key, random_resized_crop

TTA_CHOICES = ("none", "flip", "multiscale", "tencrop")
MULTISCALE_FACTORS = (1.0, 320 / 224, 380 / 224, 448 / 224)
_RANDOM_CROP_SALT = 10_000  # keys of the seeded TTA crops, apart from training epochs


@dataclass
class View:
    """One view of every sample of a batch: ``boxes`` (n, 4) as x1, y1, x2, y2 in image pixels."""
    size: int
    boxes: np.ndarray
    flip: bool


def default_scales(image_size: int) -> list[int]:
    return [int(round(image_size * f)) for f in MULTISCALE_FACTORS]


def default_tencrop_size(image_size: int) -> int:
    return 2 * image_size


def tta_sizes(recipe, scales: list[int] | None = None, tencrop_size: int | None = None) -> tuple[list[int], int]:
    """The multiscale sizes and the ten-crop size: the caller's, else the recipe's ``tta_scales`` /
    ``tencrop_size``, else derived from its ``image_size`` (recipes that leave them unset, and
    runs saved before the fields existed)."""
    scales = list(scales or recipe.tta_scales or default_scales(recipe.image_size))
    return scales, tencrop_size or recipe.tencrop_size or default_tencrop_size(recipe.image_size)


def _centre(heights, widths, fraction: float) -> np.ndarray:
    side = np.floor(fraction * np.minimum(heights, widths)).astype(np.int64)
    top, left = (heights - side) // 2, (widths - side) // 2
    return np.stack([left, top, left + side, top + side], axis=1)


def _seeded(heights, widths, indices, key) -> np.ndarray:
    """Random crops of 80-100 % of the area (ratio 3/4-4/3), keyed on each sample's file index,
    so a sample gets the same views whatever batch it is in."""
    lo, hi = float(np.log(3 / 4)), float(np.log(4 / 3))
    boxes = np.empty((len(heights), 4), np.int64)
    for row, (h, w, idx) in enumerate(zip(heights, widths, indices)):
        top, left, ch, cw = random_resized_crop(int(h), int(w), np.uint64(key), np.uint64(idx), 0.8, 1.0, lo, hi)
        boxes[row] = (left, top, left + cw, top + ch)
    return boxes


def plan(tta: str, heights: np.ndarray, widths: np.ndarray, indices: np.ndarray, *, image_size: int,
         eval_crop: float = 0.875, scales: list[int] | None = None, tencrop_size: int | None = None,
         seed: int = 0) -> list[View]:
    """The views of ``tta`` for a batch whose samples have these sizes and file indices."""
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    centre = _centre(heights, widths, eval_crop)
    if tta == "none":
        return [View(image_size, centre, False)]
    if tta == "flip":
        return [View(image_size, centre, f) for f in (False, True)]
    if tta == "multiscale":
        views = []
        for k, s in enumerate(scales or default_scales(image_size)):
            rand = _seeded(heights, widths, indices, epoch_key(seed, _RANDOM_CROP_SALT + k))
            for boxes in (_centre(heights, widths, 0.875), rand):
                views += [View(s, boxes, f) for f in (False, True)]
        return views
    if tta == "tencrop":
        size = tencrop_size or default_tencrop_size(image_size)
        side = np.floor(0.875 * np.minimum(heights, widths)).astype(np.int64)
        tops = [np.zeros_like(side), np.zeros_like(side), heights - side, heights - side, (heights - side) // 2]
        lefts = [np.zeros_like(side), widths - side, np.zeros_like(side), widths - side, (widths - side) // 2]
        views = []
        for top, left in zip(tops, lefts):
            boxes = np.stack([left, top, left + side, top + side], axis=1)
            views += [View(size, boxes, f) for f in (False, True)]
        return views
    raise ValueError(f"unknown tta {tta!r}; choose one of {', '.join(TTA_CHOICES)}")


def cut(images: torch.Tensor, view: View) -> torch.Tensor:
    """The view of every image in the batch: float (n, 3, size, size), mirrored if asked."""
    from torchvision.ops import roi_align
    # (batch index, box) rows made on the host and copied without a host wait: a blocking copy to a
    # GPU would wait for the batch's kernels in every view
    boxes = torch.as_tensor(view.boxes, dtype=torch.float32)
    rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes], 1)
    if images.is_cuda:
        rois = rois.pin_memory().to(images.device, non_blocking=True)
    out = roi_align(images, rois, output_size=(view.size, view.size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    return out.flip(3) if view.flip else out
