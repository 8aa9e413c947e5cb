"""Counter-based randomness keyed on (seed, epoch, sample index), shared by all loaders.

Stock FFCV draws crops and flips from unseeded per-thread numba RNGs, so two
runs (or a resumed run) see different data. Here every random number a sample
needs is a pure function of ``(seed, epoch, sample index, draw number)``
(SplitMix64 finaliser), so the result does not depend on threads, batch
composition, the loader or where a run was resumed. The functions are numba
``njit`` so FFCV's compiled decoders call them directly.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53

# Draw numbers: which stream a random value comes from.
DRAW_FLIP = 63
_CROP_TRIES = 10


@njit(cache=True, nogil=True)
def mix64(x):
    """SplitMix64 finaliser: a well-mixed uint64 from a uint64."""
    x = np.uint64(x)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True, nogil=True)
def epoch_key(seed, epoch):
    """The key of one epoch of one run."""
    return mix64(mix64(np.uint64(seed) * _GOLDEN + np.uint64(0x5EED)) + np.uint64(epoch) * _GOLDEN)


@njit(cache=True, nogil=True)
def uniform(key, index, draw):
    """A float in [0, 1) for ``(key, sample index, draw number)``."""
    x = mix64(key ^ mix64(np.uint64(index) * _GOLDEN + np.uint64(draw)))
    return float(x >> _S11) * _INV53


@njit(cache=True, nogil=True)
def random_resized_crop(height, width, key, index, scale_lo, scale_hi, logr_lo, logr_hi):
    """torchvision ``RandomResizedCrop.get_params`` with keyed draws -> (top, left, h, w)."""
    area = float(height) * float(width)
    for t in range(_CROP_TRIES):
        target = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, index, 4 * t))
        aspect = np.exp(logr_lo + (logr_hi - logr_lo) * uniform(key, index, 4 * t + 1))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(uniform(key, index, 4 * t + 2) * (height - h + 1))
            left = int(uniform(key, index, 4 * t + 3) * (width - w + 1))
            return top, left, h, w
    # Fallback: the whole image, clamped to the aspect-ratio range, centred.
    in_ratio = float(width) / float(height)
    if in_ratio < np.exp(logr_lo):
        w = width
        h = min(height, int(round(w / np.exp(logr_lo))))
    elif in_ratio > np.exp(logr_hi):
        h = height
        w = min(width, int(round(h * np.exp(logr_hi))))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(cache=True, nogil=True)
def flip_mask(key, indices):
    """Which samples of a batch are mirrored (probability 0.5 each)."""
    out = np.empty(len(indices), dtype=np.bool_)
    for i in range(len(indices)):
        out[i] = uniform(key, indices[i], DRAW_FLIP) < 0.5
    return out


def epoch_order(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The per-epoch seeded permutation of ``indices`` (identical on every rank)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x0DE7])
    return rng.permutation(np.asarray(indices))


@njit(cache=True, nogil=True)
def crop_window(height, width, key, index, train, scale_lo, scale_hi, logr_lo, logr_hi, eval_crop):
    """``(top, left, h, w)``: a keyed random-resized crop (train) or the centre crop of
    ``eval_crop`` x the shorter side (eval). Every loader crops through this."""
    height, width = np.int64(height), np.int64(width)
    if train:
        return random_resized_crop(height, width, key, index, scale_lo, scale_hi, logr_lo, logr_hi)
    side = np.int64(eval_crop * min(height, width))
    return (height - side) // 2, (width - side) // 2, side, side


@njit(cache=True, nogil=True)
def crop_windows(key, indices, heights, widths, train, scale_lo, scale_hi, logr_lo, logr_hi, eval_crop):
    """:func:`crop_window` for a batch of sample indices -> int64 array (n, 4)."""
    out = np.empty((len(indices), 4), dtype=np.int64)
    for i in range(len(indices)):
        idx = indices[i]
        top, left, h, w = crop_window(heights[idx], widths[idx], key, idx, train,
                                      scale_lo, scale_hi, logr_lo, logr_hi, eval_crop)
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = top, left, h, w
    return out
