"""Resident loader: every image decoded once, kept in memory, cropped in batches on the device.

VIPriors data is small (100,000 images for train+val), so after one decode pass an epoch
needs no JPEG decode at all, as airbench keeps CIFAR-10 on the GPU. The loader reads the
same ``fastvip pack`` file as the FFCV loader (FFCV's reader and its JPEG decoder, nothing
else), decodes every image once in parallel, and keeps the pixels in a *store*:

- stored size: the longer side at most ``resident_size`` (0, the default: as packed, so
  nothing is lost; smaller images are never enlarged), shrunk at decode time with DCT
  scaling and an area filter;
- layout: one ``(rows, width, 3)`` uint8 tensor, image ``i`` in rows
  ``row[i] : row[i] + h[i]`` and columns ``0 : w[i]`` (``width`` = the widest stored image);
- where: on the training GPU when it fits with a margin for the model (a quarter of the
  GPU's memory, at least 8 GiB), else in host memory (pinned, on a GPU machine); on a CPU,
  host memory. Under torchrun each process on a GPU holds its own copy; a host store is
  decoded once per machine into shared memory (``/dev/shm``) and mapped by the local
  processes. An eval loader stores only its own shard. :attr:`ResidentLoader.store` says
  where and how many bytes; the run log and ``metrics.jsonl`` carry it.

A batch is cut from the store with the same keyed windows as the FFCV and DALI loaders
(:func:`fastvip.loaders.keyed.crop_windows`: same seed, epoch and sample index, same
window; eval: the same centre crop), mirrored with the same keyed flips, and resized to the
epoch's output size (any size per batch: progressive resizing rebuilds nothing) with the
FFCV path's filters: area weights (antialiased) when the window shrinks on both axes,
OpenCV's INTER_AREA otherwise. Two implementations of that resize, chosen by the device:

- CPU: the FFCV path's own compiled resize kernels (``loaders/_jpeg.c``'s area resize,
  OpenCV's INTER_AREA), the batch split over threads;
- CUDA: batched separable resampling as two batched matrix products per batch (the
  window's rows gathered, a per-sample weight matrix for each axis with the mirror folded
  in): a fixed handful of kernels per batch, no per-sample launches, no host read.

Both compute the same weights; they differ by rounding (tests compare them on the CPU).

``storage="jpeg"`` (recipe ``resident_storage=jpeg``) keeps the packed JPEG bytes instead of
the pixels (a tenth of the memory or less) and decodes each batch on the training device
(torchvision's batched ``decode_jpeg``: nvJPEG on CUDA), then cuts it with the code above:
:mod:`fastvip.loaders.resident_jpeg`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit

from fastvip.console import printable
from fastvip.errors import FastvipError
from fastvip.data.packed import image_records, open_packed

from .jpeg import decode_region, resize as area_resize
from .native import resize_crop
from .keyed import (EpochState, crop_windows, default_workers, epoch_key, eval_shard, flip_mask, mirror_in_place,
                    process_batch, torch_threads, train_order, view_key)

GiB = 1 << 30
STORAGES = ("pixels", "jpeg")  # recipe field resident_storage
_LOG_LO, _LOG_HI = float(np.log(3 / 4)), float(np.log(4 / 3))
_CHUNK_BYTES = 128 << 20  # decode working set when the store is not host memory


_POOLS: dict[int, ThreadPoolExecutor] = {}


def in_threads(work, n: int, workers: int) -> None:
    """``work(lo, hi)`` over ``workers`` contiguous slices of ``range(n)``, in threads: the
    compiled kernels release the GIL. (numba's own ``prange`` would compile for ~10 s in every
    process: parallel code is not cached.)"""
    parts = max(1, min(workers, n))
    if parts == 1:
        work(0, n)
        return
    pool = _POOLS.get(parts) or _POOLS.setdefault(parts, ThreadPoolExecutor(parts, "fastvip-resident"))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for f in [pool.submit(work, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]:
        f.result()


# ------------------------------------------------------------------ decode once

def stored_shape(heights: np.ndarray, widths: np.ndarray, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the stored (height, width): the longer side at most ``longest`` (0: as is),
    aspect kept, never enlarged."""
    h, w = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    if longest <= 0:
        return h.copy(), w.copy()
    side = np.maximum(h, w)
    f = np.minimum(1.0, longest / side)
    return (np.maximum(1, np.round(h * f)).astype(np.int64), np.maximum(1, np.round(w * f)).astype(np.int64))


def store_bytes(heights: np.ndarray, widths: np.ndarray, longest: int) -> int:
    """Bytes of a store of these images at ``resident_size`` = ``longest``."""
    h, w = stored_shape(heights, widths, longest)
    return int(h.sum()) * int(w.max()) * 3 if len(h) else 0


WARNED = 1  # a _decode_into status: decoded, but libjpeg warned


@njit(cache=True, nogil=True)
def _decode_into(data, ptrs, sizes, modes, heights, widths, th, tw, row0, dst, status):
    """Decode image ``j`` into ``dst[row0[j]:row0[j]+th[j], :tw[j]]`` (shrunk when its stored size
    is smaller: DCT scale n/8, then area weights); ``status[j]`` = 0, a (negative) decoder error
    code, or ``WARNED`` when libjpeg warned decoding it."""
    info = np.zeros(6, np.int64)
    for j in range(len(ptrs)):
        src = data[ptrs[j]:ptrs[j] + sizes[j]]
        height, width = heights[j], widths[j]
        out = dst[row0[j]:row0[j] + th[j], :tw[j]]
        if modes[j] == 0:  # JPEG
            num = 8  # the smallest DCT scale at which the decode still covers the stored size
            while num > 1 and (height * (num // 2) + 7) // 8 >= th[j] and (width * (num // 2) + 7) // 8 >= tw[j]:
                num //= 2
            sh, sw = (height * num + 7) // 8, (width * num + 7) // 8
            buf = np.empty(height * width * 3, np.uint8)
            # the whole image, through the decoder that counts libjpeg's warnings
            status[j] = decode_region(src, buf, 0, 0, height, width, num, info)
            if status[j] == 0 and info[5] > 0:
                status[j] = WARNED
            image = buf[:sh * sw * 3].reshape(sh, sw, 3)
        else:  # raw pixels (files written by FFCV's own tools)
            sh, sw = height, width
            image = src[:sh * sw * 3].reshape(sh, sw, 3)
        if sh == th[j] and sw == tw[j]:
            out[:, :, :] = image
        elif area_resize(image, 0, sh, 0, sw, out, False) != 0:
            status[j] = -3


@njit(cache=True, nogil=True)
def crop_resize(store, rows, wins, mirror, out):
    """CPU: ``out[i]`` = window ``wins[i]`` (top, left, h, w) of the image starting at store row
    ``rows[i]``, resized to ``out``'s size as the FFCV path resizes a decoded crop, mirrored."""
    size_h, size_w = out.shape[1], out.shape[2]
    for i in range(len(rows)):
        top, left, h, w = wins[i, 0], wins[i, 1], wins[i, 2], wins[i, 3]
        image = store[rows[i] + top:rows[i] + top + h]  # whole stored rows, contiguous
        dst = out[i]
        if h >= size_h and w >= size_w:
            area_resize(image, 0, h, left, left + w, dst, mirror[i])
            continue
        resize_crop(image, 0, h, left, left + w, dst)
        if mirror[i]:
            mirror_in_place(dst)


# ------------------------------------------------------------------ batched resize (CUDA)

def axis_weights(start: torch.Tensor, length: torch.Tensor, size: int, extent: int, area: torch.Tensor,
                 mirror: torch.Tensor | None = None) -> torch.Tensor:
    """``(m, size, extent)`` resampling weights: output pixel ``i`` of sample ``k`` from input
    pixels ``[start[k], start[k] + length[k])`` of an axis ``extent`` long, the CPU kernels'
    weights: where ``area[k]`` (the window shrinks on both axes) box weights, the overlap of
    each output pixel's footprint with each input pixel (``loaders/_jpeg.c``); otherwise
    OpenCV's INTER_AREA for enlarging (two linear taps at its pixel-area phase, FFCV's
    ``resize_crop``). ``mirror[k]`` reverses the output order."""
    dev = start.device
    scale = (length.to(torch.float32) / size)[:, None, None]
    i = torch.arange(size, device=dev, dtype=torch.float32)[None, :, None]
    if mirror is not None:
        i = torch.where(mirror[:, None, None], size - 1 - i, i)
    x = torch.arange(extent, device=dev, dtype=torch.float32)[None, None, :] - start[:, None, None].to(torch.float32)
    length = length[:, None, None].to(torch.float32)
    box = (torch.minimum((i + 1) * scale, x + 1) - torch.maximum(i * scale, x)).clamp_(min=0) / scale
    # OpenCV: sx = floor(dx * scale); fx = (dx + 1) - (sx + 1) / scale, its fractional part when > 0
    s = torch.floor(i * scale)
    f = (i + 1) - (s + 1) / scale
    f = torch.where(f <= 0, torch.zeros_like(f), f - torch.floor(f))
    last = s >= length - 1
    s, f = torch.where(last, length - 1, s), torch.where(last, torch.zeros_like(f), f)
    taps = (x == s) * (1 - f) + (x == s + 1) * f
    w = torch.where(area[:, None, None], box, taps) * ((x >= 0) & (x < length))
    return w / w.sum(-1, keepdim=True)


def resize_batch(store: torch.Tensor, rows: torch.Tensor, wins: torch.Tensor, mirror: torch.Tensor,
                 size: int, height: int) -> torch.Tensor:
    """Batched crop + resize + mirror of windows ``wins`` (m, 4: top, left, h, w) of the images
    at store rows ``rows`` -> uint8 ``(m, 3, size, size)``, channels-last. ``height`` >= every
    window's ``h`` (known on the host, so nothing is read back). All on ``store``'s device."""
    m, width = wins.shape[0], store.shape[1]
    top, left, h, w = wins.unbind(1)
    r = torch.arange(height, device=store.device)
    index = (rows + top)[:, None] + torch.minimum(r[None, :], h[:, None] - 1)
    dtype = torch.float16 if store.is_cuda else torch.float32  # 0-255 are exact in fp16
    x = store.index_select(0, index.reshape(-1)).view(m, height, width * 3).to(dtype)
    area = (h >= size) & (w >= size)
    wy = axis_weights(torch.zeros_like(top), h, size, height, area).to(dtype)
    wx = axis_weights(left, w, size, width, area, mirror).to(dtype)
    y = torch.bmm(wy, x).view(m, size, width, 3).transpose(2, 3).reshape(m, size * 3, width)
    z = torch.bmm(y, wx.transpose(1, 2))  # (m, size * 3, size): rows, channels, columns
    out = z.round_().clamp_(0, 255).to(torch.uint8).view(m, size, 3, size).transpose(2, 3).contiguous()
    return out.permute(0, 3, 1, 2)


# ------------------------------------------------------------------ where the store lives

def _free_bytes(device: torch.device) -> tuple[int, int, str]:
    """(bytes the store may take, bytes free, what the margin is) on ``device``'s memory."""
    if device.type == "cuda":  # half the card for the model, its activations and the allocator's cache
        free, total = torch.cuda.mem_get_info(device)
        margin = max(total // 2, 8 * GiB)
        return free - margin, free, f"{margin / GiB:.0f} GB kept for the model"
    import psutil
    avail = psutil.virtual_memory().available
    margin = max(avail // 5, GiB // 2)
    return avail - margin, avail, f"{margin / GiB:.1f} GB kept free"


def pinned_bytes(n: int) -> int:
    """What a pinned host block of ``n`` bytes really takes: PyTorch's caching host allocator
    rounds every block up to a power of two (a 40 GB store holds 64 GB)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _fit_hint(rec, keep, budget: int, packed_longest: int, storage: str) -> str:
    """What would fit in ``budget`` bytes instead: a smaller pixel store, or the JPEG bytes."""
    heights, widths = rec.heights[keep], rec.widths[keep]
    fit, jpeg = _fitting_size(heights, widths, budget, packed_longest), int(rec.sizes[keep].sum())
    options = [f"resident_storage jpeg would fit ({_gb(jpeg)})"] if storage == "pixels" and jpeg <= budget else []
    if fit:
        options.append(("resident_storage pixels at " if storage == "jpeg" else "")
                       + f"resident_size {fit} would fit ({_gb(store_bytes(heights, widths, fit))})")
    return ", or ".join(options) if options else "no resident storage does; use loader ffcv"


def _fitting_size(heights, widths, budget: int, packed_longest: int) -> int | None:
    for s in sorted({*range(16, packed_longest + 1, 16), packed_longest}, reverse=True):
        if store_bytes(heights, widths, s) <= budget:
            return s
    return None


def _gb(n: int) -> str:
    return f"{n / GiB:.2f} GB" if n >= GiB // 10 else f"{n / (1 << 20):.1f} MB"


def _local_world() -> tuple[int, int]:
    """(local rank, local processes) under torchrun; (0, 1) otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ResidentLoader(EpochState):
    """The resident path of the loader interface (see :mod:`fastvip.loaders` and this module)."""

    name = "resident"

    def __init__(self, path, *, train: bool, batch_size: int, image_size: int, device: torch.device,
                 seed: int = 0, workers: int = 0, eval_crop: float = 0.875,
                 crop_scale: tuple[float, float] = (0.08, 1.0), views: int = 1, pk: int = 0, indices=None,
                 resident_size: int = 0, console=None, backend: str = "auto", storage: str = "pixels",
                 skip_damaged: bool = False):
        if resident_size < 0:
            raise FastvipError(f"resident_size must be >= 0 (0 = the packed size), not {resident_size}")
        if storage not in STORAGES:
            raise FastvipError(f"resident_storage must be one of {', '.join(STORAGES)}, not {storage!r}")
        if storage == "jpeg" and resident_size:
            raise FastvipError(f"resident_size {resident_size} shrinks the pixel store; resident_storage jpeg keeps "
                               "the packed JPEG bytes as they are: set resident_size 0 (or resident_storage pixels)")
        if backend not in ("auto", "kernel", "matmul"):
            raise FastvipError(f"backend must be auto, kernel or matmul, not {backend!r}")
        self.packed = open_packed(path)
        self.rank, self.world, local = process_batch(batch_size, train, pk)
        if train and pk and self.packed.labels is None:
            raise FastvipError(f"P x K batches need labels; {path} is unlabelled")
        self.train, self.batch_size, self.device, self.seed = train, local, device, seed
        self.storage, self.jpeg = storage, None
        self.views = views if train else 1
        self.pk, self.crop_scale, self.eval_crop = pk, crop_scale, eval_crop
        self.workers = workers or default_workers()
        self.image_size = self.size = image_size
        self.epoch, self.start_batch = 0, 0
        self.backend = ("matmul" if device.type == "cuda" else "kernel") if backend == "auto" else backend
        if self.backend == "kernel" and device.type == "cuda":
            raise FastvipError("the resident loader's kernel backend runs on the CPU; on CUDA use backend auto")
        all_idx = np.arange(self.packed.num_samples) if indices is None else np.asarray(indices, np.int64)
        self.indices = all_idx if train else eval_shard(all_idx, self.world, self.rank)
        self.skip_damaged = skip_damaged
        self.indices, self.left_out = self._screen(self.indices)
        self.num_samples = len(self._order(0)) if train else len(self.indices)
        self.heights, self.widths = self.packed.heights, self.packed.widths
        torch.set_num_threads(torch_threads())  # importing FFCV's kernels (module top) set it to 1
        self._warned: list[int] = []  # samples libjpeg warned about while the store was filled
        self._load(path, resident_size, console)
        self._leave_out_warned()

    def _leave_out_warned(self) -> None:
        """Leave out (or stop at) the samples libjpeg warned about while the store was filled:
        damaged as a checksum mismatch is. Every process of a job learns of those another one
        decoded (a shared store is filled by one process), so their batches stay in step."""
        warned = torch.zeros(self.packed.num_samples, dtype=torch.int32)
        warned[self._warned] = 1
        if self.train and self.world > 1:
            from fastvip.distributed import all_reduce_sum
            warned = all_reduce_sum(warned.to(self.device)).cpu()
        bad = np.flatnonzero(warned.numpy())
        if len(bad):
            from fastvip.data.packed import JPEG_WARNED
            self.indices = self.indices[~np.isin(self.indices, bad)]
            self.left_out += self.leave_out(bad, every=bad, why=JPEG_WARNED)
            self.num_samples = len(self._order(0)) if self.train else len(self.indices)

    def _screen(self, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """``indices`` without damaged samples (checked once, before the store is filled: the
        store is what every epoch reads) and how many were left out; unless ``skip_damaged``,
        a damaged sample is the one-line error naming it."""
        from fastvip.data.packed import damaged_samples
        bad = damaged_samples(self.packed, indices)
        if not len(bad):
            return indices, 0
        return indices[~np.isin(indices, bad)], self.leave_out(bad, every=bad)

    # -- the store

    def _load(self, path, resident_size: int, console) -> None:
        """Fill the store with the images this process needs, once: their decoded pixels, or
        (``storage`` jpeg, :mod:`fastvip.loaders.resident_jpeg`) their packed JPEG bytes."""
        rec = image_records(path)
        keep = np.unique(self.indices)  # an eval shard or a subset stores only its own images
        packed_longest = int(np.maximum(rec.heights, rec.widths).max()) if len(keep) else 0
        if self.storage == "jpeg":
            from .resident_jpeg import JpegStore
            self.jpeg = JpegStore(self, rec, keep, path, console)
            plan = self.jpeg.plan()
        else:
            plan = self._pixel_plan(rec, keep, resident_size, packed_longest, path, console)
        nbytes = plan["bytes"]
        budget, free, margin = _free_bytes(self.device)
        local_rank, local_world = _local_world()
        # collective: every process of the job takes the same barriers here, wherever its store is
        collective = self.train and self.world > 1
        on_device = self.device.type == "cuda" and plan["device"] and nbytes <= budget
        where = str(self.device) if on_device else "host"
        budget_dev, margin_dev = budget, margin
        if where == "host" and self.device.type == "cuda":
            budget, free, margin = _free_bytes(torch.device("cpu"))
        shared = collective and local_world > 1 and where == "host"
        pinned = where == "host" and self.device.type == "cuda" and plan["device"] and not shared
        # PyTorch's pinned (caching host) allocator rounds a block up to a power of two: count that
        held = pinned_bytes(nbytes) if pinned else nbytes
        per_machine = held * (1 if shared or where != "host" else local_world)
        fits = not (where == "host" and per_machine > budget)
        if collective:  # every process learns that one does not fit, so none waits in a barrier
            from fastvip.distributed import agree
            agree(fits, f"resident loader: the {len(keep)} images of {path} do not fit in some process's "
                        f"memory (its log says how much; a smaller resident_size would)", self.device)
        if not fits:
            hint = _fit_hint(rec, keep, budget // (1 if shared else local_world), packed_longest, self.storage)
            raise FastvipError(
                f"resident loader: {len(keep)} images of {path} {plan['what']} need {_gb(per_machine)}"
                + (f" ({local_world} processes)" if per_machine != nbytes else "")
                + f", but {'the GPU and ' if self.device.type == 'cuda' and plan['device'] else ''}host memory "
                f"has {_gb(free)} free ({margin}); {hint}")
        store, note, fill = self._allocate(where, plan["shape"], nbytes, shared, collective, path, plan["key"],
                                           pin=plan["device"])
        self.store_tensor = store
        if self.device.type != "cuda":
            why = ""
        elif where != "host":
            why = f"it fits the {_gb(budget)} the GPU allows ({_gb(free)} free, {margin})"
        else:
            why = (f"{_gb(nbytes)} exceed the {_gb(max(budget_dev, 0))} the GPU allows ({margin_dev})"
                   if plan["device"] else "this storage is read from host memory")
        self.store = {"storage": self.storage, "where": where + note, "bytes": nbytes, "images": int(len(keep)),
                      "resident_size": resident_size or packed_longest, "why": why,
                      "allocated": pinned_bytes(nbytes) if "pinned" in note else nbytes, **plan["info"]}
        failed = None
        if fill:
            try:
                plan["fill"](store)
            except FastvipError as e:
                failed = e
                if not collective:
                    raise
        if collective:  # a failed decode (of a shared store especially) stops every process
            from fastvip.distributed import agree
            agree(failed is None, str(failed) if failed else f"resident loader: loading {path} failed in "
                                                              "another process", self.device)
            _barrier()  # a shared store is filled and every local process has mapped it
            if local_rank == 0 and self._shm is not None:
                self._shm.unlink(missing_ok=True)  # the mappings stay; nothing is left in /dev/shm
        # the host copies the sample windows refer to, and the labels
        self._rows_dev = torch.as_tensor(self.row, device=self.device) if where != "host" else None
        labels = self.packed.labels if self.packed.labels is not None else np.full(self.packed.num_samples, -1)
        self.labels = torch.from_numpy(np.array(labels, np.int64))

    def _pixel_plan(self, rec, keep, resident_size, packed_longest, path, console) -> dict:
        """The decoded-pixel store: its layout (rows, stored sizes), bytes and how to fill it."""
        h, w = stored_shape(rec.heights[keep], rec.widths[keep], resident_size)
        self.stored_h = np.zeros(self.packed.num_samples, np.int64)
        self.stored_w = np.zeros(self.packed.num_samples, np.int64)
        self.stored_h[keep], self.stored_w[keep] = h, w
        self.row = np.zeros(self.packed.num_samples, np.int64)
        self.row[keep] = np.concatenate([[0], np.cumsum(h)[:-1]]) if len(keep) else []
        rows, width = int(h.sum()), int(w.max()) if len(w) else 1
        size_note = f"resident_size {resident_size}" if resident_size else f"the packed size ({packed_longest} px)"
        return {"bytes": rows * width * 3, "shape": (max(rows, 1), width, 3), "device": True,
                "what": f"at {size_note}", "key": resident_size, "info": {"width": width},
                "fill": lambda store: self._decode(rec, keep, h, w, store, console, path)}

    def _allocate(self, where, shape, nbytes, shared, collective, path, key, pin=True):
        """(store of ``shape``, note for the log, whether this process fills it). ``collective``: every
        process of the job calls this and takes one barrier, whatever ``where`` and /dev/shm say.
        ``key`` tells stores of one file apart in /dev/shm; ``pin``: pinned host memory on CUDA."""
        self._shm = None
        local_rank, local_world = _local_world()
        name = _shm_name(path, key, nbytes) if shared else None
        if shared and local_rank == 0 and _shm_fits(nbytes):
            with open(name, "wb") as fh:
                fh.truncate(nbytes or 1)
        if collective:
            _barrier()  # local process 0 has made the shared file, or found no room for it
        if where != "host":
            return torch.empty(shape, dtype=torch.uint8, device=self.device), "", True
        if shared:
            if name.exists():
                self._shm = name
                flat = torch.from_file(os.fspath(name), shared=True, size=nbytes or 1, dtype=torch.uint8)
                return flat[:int(np.prod(shape))].view(shape), f" shared by {local_world} local processes", \
                    local_rank == 0
        pin = pin and self.device.type == "cuda"
        try:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=pin), " (pinned)" if pin else "", True
        except RuntimeError:  # the host would not pin that much: pageable, staged through pinned batches
            return torch.empty(shape, dtype=torch.uint8), "", True

    def _decode(self, rec, keep, h, w, store, console, path) -> None:
        from fastvip.console import Console
        console = console or Console(quiet=True)
        data = np.memmap(os.fspath(path), dtype=np.uint8, mode="r").view(np.ndarray)
        host = store.device.type == "cpu"
        per_row = store.shape[1] * 3
        with console.progress(f"resident {'train' if self.train else 'eval'} decode", len(keep)) as bar:
            start = 0
            while start < len(keep):
                # a chunk's rows are a bounded working set; a host store is decoded in place
                end = start + 1
                budget = max(_CHUNK_BYTES // per_row, int(h[start]))
                while end < len(keep) and end - start < 4096 and self.row[keep[end]] + h[end] - self.row[keep[start]] <= budget:
                    end += 1
                j = keep[start:end]
                row0 = self.row[j] - self.row[j[0]]
                n_rows = int(row0[-1] + h[end - 1])
                dst = (store[self.row[j[0]]:self.row[j[0]] + n_rows] if host else
                       torch.empty((n_rows, store.shape[1], 3), dtype=torch.uint8)).numpy()
                status = np.zeros(len(j), np.int64)
                th, tw = h[start:end], w[start:end]
                in_threads(lambda lo, hi: _decode_into(
                    data, rec.ptrs[j[lo:hi]], rec.sizes[j[lo:hi]], rec.modes[j[lo:hi]], rec.heights[j[lo:hi]],
                    rec.widths[j[lo:hi]], th[lo:hi], tw[lo:hi], row0[lo:hi], dst, status[lo:hi]), len(j), self.workers)
                if (status < 0).any():
                    bad = int(j[np.flatnonzero(status < 0)[0]])
                    raise FastvipError(f"resident loader: image {bad} ({printable(self.packed.ids[bad])}) of "
                                       f"{path} does not decode; run `fastvip verify --decode {path}`, then re-pack it")
                self._warned.extend(j[status == WARNED].tolist())
                if not host:
                    store[self.row[j[0]]:self.row[j[0]] + n_rows].copy_(torch.from_numpy(dst))
                bar.advance(len(j))
                start = end

    @property
    def cpu_decoded(self) -> int:
        """JPEG storage: decodes of images the device decoder rejects, done on the CPU instead."""
        return self.jpeg.cpu_decoded if self.jpeg is not None else 0

    # -- the loader interface

    def _order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return self.indices
        return train_order(self.seed, epoch, self.indices, self.batch_size * self.world, world=self.world,
                           rank=self.rank, labels=self.packed.labels, pk=self.pk)

    def windows(self, idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample indices repeated per view, windows in stored pixels (m, 4), mirror flags) of a batch."""
        key = np.uint64(epoch_key(self.seed, epoch))
        keys = [np.uint64(view_key(key, v)) for v in range(self.views)]
        u = idx.astype(np.uint64)
        win = np.concatenate([crop_windows(k, u, self.heights, self.widths, self.train, float(self.crop_scale[0]),
                                           float(self.crop_scale[1]), _LOG_LO, _LOG_HI, float(self.eval_crop))
                              for k in keys])
        mirror = (np.concatenate([flip_mask(k, u) for k in keys]) if self.train
                  else np.zeros(len(win), np.bool_))
        idx = np.tile(idx, self.views)
        fy = self.stored_h[idx] / self.heights[idx]
        fx = self.stored_w[idx] / self.widths[idx]
        if not (np.all(fy == 1) and np.all(fx == 1)):  # a smaller store: the window in stored pixels
            win = win.astype(np.float64)
            top = np.minimum(np.round(win[:, 0] * fy), self.stored_h[idx] - 1)
            left = np.minimum(np.round(win[:, 1] * fx), self.stored_w[idx] - 1)
            hh = np.clip(np.round(win[:, 2] * fy), 1, self.stored_h[idx] - top)
            ww = np.clip(np.round(win[:, 3] * fx), 1, self.stored_w[idx] - left)
            win = np.stack([top, left, hh, ww], 1).astype(np.int64)
        return idx, win, mirror

    def _batch(self, idx: np.ndarray, epoch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.jpeg is not None:
            return self.jpeg.batch(idx, epoch, size)
        idx, win, mirror = self.windows(idx, epoch)
        labels = self.labels[torch.from_numpy(idx)]
        if self.backend == "kernel":
            out = np.empty((len(idx), size, size, 3), np.uint8)
            store, rows = self.store_tensor.numpy(), self.row[idx]
            in_threads(lambda lo, hi: crop_resize(store, rows[lo:hi], win[lo:hi], mirror[lo:hi], out[lo:hi]),
                        len(idx), self.workers)
            images = torch.from_numpy(out).permute(0, 3, 1, 2)
            return images.to(self.device), labels.to(self.device)
        height = int(win[:, 2].max())
        dev = self.device
        cuda = dev.type == "cuda"

        def put(a):  # host -> device without a host wait
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(dev, non_blocking=True) if cuda else t.to(dev)

        wins, flips = put(win), put(mirror)
        if self._rows_dev is not None:  # the store is on the device
            images = resize_batch(self.store_tensor, self._rows_dev[put(idx)], wins, flips, size, height)
        else:  # host store: gather the windows' rows on the host, resize on the device
            top, h = win[:, 0], win[:, 2]
            index = (self.row[idx] + top)[:, None] + np.minimum(np.arange(height)[None, :], h[:, None] - 1)
            rows = torch.from_numpy(index.reshape(-1))
            staged = torch.empty((len(rows), self.store_tensor.shape[1], 3), dtype=torch.uint8, pin_memory=cuda)
            torch.index_select(self.store_tensor, 0, rows, out=staged)
            gathered = staged.to(dev, non_blocking=True) if cuda else staged
            local = torch.arange(len(idx), device=dev) * height
            wins_local = torch.cat([torch.zeros_like(wins[:, :1]), wins[:, 1:]], 1)
            images = resize_batch(gathered, local, wins_local, flips, size, height)
        return images, labels.pin_memory().to(dev, non_blocking=True) if cuda else labels.to(dev)

    def __iter__(self):
        epoch, size = self.epoch, self.size
        order = self._order(epoch)[self.start_batch * self.batch_size:]
        self.start_batch = 0  # the skip is for this pass only
        # left out of every pass; every train process screened the whole file: counted by one
        self.damaged_skipped += self.left_out if not self.train or self.rank == 0 else 0
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            if self.train and len(idx) < self.batch_size:
                break
            yield self._batch(idx, epoch, size)


def _shm_name(path, resident_size: int, nbytes: int):
    """The ``/dev/shm`` name of this job's shared store of ``path`` (the same in every local process)."""
    from pathlib import Path
    st = os.stat(path)
    job = os.environ.get("TORCHELASTIC_RUN_ID", "") + ":" + os.environ.get("MASTER_PORT", "")
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{resident_size}|{nbytes}|{job}"
    return Path("/dev/shm") / f"fastvip-resident-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def _shm_fits(nbytes: int) -> bool:
    try:
        return shutil.disk_usage("/dev/shm").free > nbytes * 1.05
    except OSError:  # no /dev/shm: each local process keeps its own copy
        return False
