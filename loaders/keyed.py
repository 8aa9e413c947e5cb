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
import torch
from numba import njit

from fastvip.errors import FastvipError

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


def pk_order(seed: int, epoch: int, indices: np.ndarray, labels: np.ndarray, p: int, k: int,
             world: int = 1) -> np.ndarray:
    """Class-balanced batches of ``p`` classes x ``k`` samples for each of ``world`` ranks.

    Each class's samples are shuffled and cut into groups of ``k`` (a class with fewer
    than ``k`` samples is filled up by repeating its own samples; a remainder is left for
    another epoch). The groups are shuffled and dealt into global batches of ``world * p``
    groups of distinct classes, a group deferred when its class is already in the batch
    being filled. Global batch ``b`` is laid out rank by rank, so rank ``r`` reading its
    ``p * k`` slice of each global batch gets whole classes (see :func:`rank_slice`).
    Identical on every rank. Every epoch has the same number of whole global batches:
    ``floor(groups / (world * p))``; when leftover groups of too few classes remain, the
    last batches are filled with ``k`` random samples of random distinct classes.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x9C4B])
    indices = np.asarray(indices)
    labels = np.asarray(labels)[indices]
    groups, group_class = [], []
    for c in np.unique(labels):
        mine = rng.permutation(indices[labels == c])
        if len(mine) < k:
            mine = np.concatenate([mine, rng.choice(mine, k - len(mine))])
        for g in range(len(mine) // k):
            groups.append(mine[g * k:(g + 1) * k])
            group_class.append(c)
    per_batch = world * p
    batches, open_batch, open_classes, pending = [], [], set(), []
    for g in rng.permutation(len(groups)):
        pending.append(g)  # groups wait here while their class is already in the open batch
        i = 0
        while i < len(pending):
            h = pending[i]
            if group_class[h] in open_classes:
                i += 1
                continue
            open_batch.append(h)
            open_classes.add(group_class[h])
            pending.pop(i)
            if len(open_batch) == per_batch:
                batches.append(open_batch)
                open_batch, open_classes, i = [], set(), 0
    # Leftover groups of a few classes cannot fill a batch of distinct classes; top the epoch
    # up with fresh groups of random distinct classes so every epoch has the same length.
    classes = np.unique(labels)
    if len(classes) < per_batch:
        raise ValueError(f"P x K batches need {per_batch} distinct classes per global batch, "
                         f"the data has {len(classes)}")
    members = {c: indices[labels == c] for c in classes}
    out = [groups[h] for batch in batches for h in batch]
    for _ in range(len(groups) // per_batch - len(batches)):
        for c in rng.choice(classes, per_batch, replace=False):
            out.append(rng.choice(members[c], k, replace=len(members[c]) < k))
    return np.concatenate(out) if out else indices[:0]


def rank_slice(order: np.ndarray, batch_size: int, world: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s part of a global order: its ``batch_size // world`` slice of every whole
    global batch of ``batch_size`` (the last partial global batch is dropped)."""
    local = batch_size // world
    steps = len(order) // batch_size
    shaped = np.asarray(order)[:steps * batch_size].reshape(steps, world, local)
    return shaped[:, rank].reshape(-1)


def train_order(seed: int, epoch: int, indices: np.ndarray, batch_size: int, *, world: int = 1,
                rank: int = 0, labels: np.ndarray | None = None, pk: int = 0) -> np.ndarray:
    """This rank's training samples for ``epoch``, in order, whole local batches only.

    ``batch_size`` is global. ``pk > 0``: P x K class-balanced batches, ``P = batch_size / (world * pk)``
    classes per rank (:func:`pk_order`); otherwise a seeded permutation (:func:`epoch_order`).
    """
    if pk > 0:
        order = pk_order(seed, epoch, indices, labels, batch_size // (world * pk), pk, world)
    else:
        order = epoch_order(seed, epoch, indices)
    return rank_slice(order, batch_size, world, rank)


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed, (0, 1) when it is not initialised."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_workers() -> int:
    """Decode threads when the recipe says 0: this machine's cores shared by the processes
    torchrun started on it (``LOCAL_WORLD_SIZE``), so 8 processes do not each take all."""
    import os
    return _per_process(os.cpu_count() or 1)


def _per_process(cores: int) -> int:
    """``cores`` shared by the processes torchrun started on this machine (at least 1)."""
    import os
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


def torch_threads() -> int:
    """Intra-op threads for torch in this process: ``OMP_NUM_THREADS`` when set (torchrun sets
    it), else the cores this process may run on shared by the processes torchrun started here.
    Importing FFCV sets torch's count to 1 and its ``Loader`` sets it to its worker count
    (``ffcv.pipeline.compiler.Compiler.set_num_threads``); the FFCV and resident loaders put
    this back once built, or a CPU run would train on one core of two."""
    import os
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return _per_process(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def process_batch(batch_size: int, train: bool, pk: int = 0) -> tuple[int, int, int]:
    """(rank, world, this process's batch): a global train batch is split evenly over the
    processes (eval batches are per process); one-line errors when it cannot be."""
    rank, world = dist_rank_world()
    if batch_size % world:
        raise FastvipError(f"batch_size {batch_size} is not divisible by the {world} processes")
    local = batch_size // world if train else batch_size
    if train and pk and local % pk:
        raise FastvipError(f"P x K batches: the per-process batch {local} is not a multiple of K={pk}")
    return rank, world, local


def eval_shard(indices: np.ndarray, world: int, rank: int) -> np.ndarray:
    """Contiguous, possibly uneven eval shards: every sample on exactly one rank, none repeated."""
    return np.array_split(np.asarray(indices), world)[rank]


@njit(cache=True, nogil=True)
def view_key(key, view):
    """The key of augmented view ``view`` of an epoch (view 0 uses the epoch key itself)."""
    if view == 0:
        return key
    return mix64(key ^ mix64(np.uint64(view) * _GOLDEN + np.uint64(0x71E3)))


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


@njit(cache=True, nogil=True)
def mirror_in_place(image):
    """Mirror an ``(h, w, 3)`` image left-right in place: the CPU kernels' flip after a resize
    that cannot fold the mirror in (the FFCV decoder's and the resident loader's)."""
    h, w = image.shape[0], image.shape[1]
    for r in range(h):
        for c in range(w // 2):
            for ch in range(3):
                t = image[r, c, ch]
                image[r, c, ch] = image[r, w - 1 - c, ch]
                image[r, w - 1 - c, ch] = t


def checked_size(requested: int | None, current: int, largest: int) -> int:
    """The size ``set_epoch(epoch, image_size=requested)`` leaves a loader at (``None`` keeps
    ``current``); one-line error past ``largest``, the size the loader was built for."""
    if requested is None:
        return current
    size = int(requested)
    if not 8 <= size <= largest:
        raise FastvipError(f"output size {size} is outside [8, {largest}]: build the loader with "
                           f"image_size >= the largest size the schedule asks for")
    return size


class EpochState:
    """The loader interface's bookkeeping shared by the loaders: ``classes``, ``set_epoch`` and
    ``__len__`` over ``packed``, ``train``, ``num_samples``, ``batch_size`` (per process), ``size``
    and ``image_size``. ``__len__`` counts the batches as DALI and the resident loader cut them;
    the FFCV loader asks FFCV's loader instead."""

    skip_damaged = False  # leave damaged samples out (each reported) instead of stopping
    damaged_skipped = 0  # damaged samples left out of this loader's batches so far

    @property
    def classes(self) -> list[str]:
        return self.packed.classes

    def leave_out(self, samples: np.ndarray, every: np.ndarray | None = None, why: str | None = None) -> int:
        """Report damaged ``samples`` as left out (``skip_damaged``) and return how many; else the
        one-line error naming them, counted in ``every`` (all the file's damaged samples) or, when
        that is not known, found with one more pass over the file (on the way out only).
        ``why`` (default: a checksum mismatch) says how they were found damaged; libjpeg's warnings
        are found only in decoding, so no pass over the file counts those."""
        from fastvip.data.packed import CHECKSUM_MISMATCH, damaged_message, damaged_samples, skip_notice
        samples, why = np.unique(samples), why or CHECKSUM_MISMATCH
        if not self.skip_damaged:
            if every is None and why == CHECKSUM_MISMATCH:
                every = damaged_samples(self.packed)
            bad = every if every is not None and len(every) else samples
            raise FastvipError(damaged_message(self.packed, bad, all_known=every is not None, why=why))
        for i in samples:
            skip_notice(self.packed, int(i), why)
        return len(samples)

    def without_damaged(self, bad_rows: np.ndarray, samples: np.ndarray, images: torch.Tensor,
                        labels: torch.Tensor, why: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch without its rows ``bad_rows`` (bool per row), those of the damaged samples
        ``samples`` (:meth:`leave_out`, ``why`` as there)."""
        self.damaged_skipped += self.leave_out(samples, why=why)
        keep = torch.from_numpy(np.flatnonzero(~bad_rows)).to(images.device)
        return images.index_select(0, keep), labels.index_select(0, keep)

    def set_epoch(self, epoch: int, image_size: int | None = None, start_batch: int = 0) -> None:
        self.epoch = int(epoch)
        self.start_batch = int(start_batch) if self.train else 0
        self.size = checked_size(image_size, self.size, self.image_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.train else -(-n // self.batch_size)
