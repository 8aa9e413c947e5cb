"""FFCV loader: reads a ``fastvip pack`` file with FFCV's compiled JPEG pipeline.

Files written by FFCV's own tools are read too: their images may be stored as JPEG or
as raw pixels (``write_mode`` raw, smart, proportion), per sample; raw samples are
cropped and resized without a decode.

Train: random-resized-crop decode (scale 0.08-1, ratio 3/4-4/3) to
``image_size`` and a random horizontal flip, both inside FFCV's compiled, parallel
decode loop (a flip on the device cost 13% on CPU). Eval: centre crop
of ``eval_crop`` x the shorter side resized to ``image_size`` (= resize the
shorter side to ``image_size / eval_crop`` and centre-crop), every sample once.

Crops and flips are keyed on (seed, epoch, sample index) (:mod:`fastvip.loaders.keyed`)
instead of FFCV's unseeded numba RNG. The decoder gets the epoch's key once
per batch through a numba ``objmode`` call, so the pipeline is compiled once
and never recompiled per epoch. The sample order is fastvip's own
(:func:`fastvip.loaders.keyed.epoch_order`), not FFCV's quasi-random order.
"""
from __future__ import annotations

import itertools
import os
import queue
import warnings

import numpy as np
import torch
from numba import njit, objmode

from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV: a cheap import
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder
from ffcv.loader import Loader as _FFCVLoader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from fastvip.errors import FastvipError
from fastvip.data.packed import open_packed

from .jpeg import decode_region, resize
from .native import imdecode, resize_crop, xxh3_seeded
from .keyed import (DRAW_FLIP, EpochState, crop_window, default_workers, epoch_key, eval_shard, mirror_in_place,
                    process_batch, torch_threads, train_order, uniform, view_key)

# The per-batch objmode call that fetches the epoch key is the only Python in the
# decoder; numba warns that it holds the GIL, which is what we want there.
warnings.filterwarnings("ignore", message=".*object mode won't allow parallel execution.*")

_KEYS: dict[int, np.uint64] = {}
_SIZES: dict[int, int] = {}
_CHECKS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_TOKENS = itertools.count()
_NO_CHECKS = (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8))


def _current_key(token):
    return _KEYS[token]


def _current_size(token):
    return _SIZES[token]


def _current_checks(token):
    return _CHECKS.get(token, _NO_CHECKS)


# what decoder flags say about a sample (0: sound)
FLAG_CHECKSUM, FLAG_WARNED = 1, 2


def set_checks(token: int, packed, flags: np.ndarray) -> None:
    """Make decoder ``token`` check every sample against ``packed``'s checksums (where it has them)
    before decoding it, marking ``flags[sample] = FLAG_CHECKSUM`` (and decoding nothing) where one
    does not match, and ``FLAG_WARNED`` where libjpeg warns decoding the sample's crop."""
    if packed.checksums is None:
        _CHECKS[token] = (_NO_CHECKS[0], _NO_CHECKS[1], flags)
    else:
        _CHECKS[token] = (np.ascontiguousarray(packed.checksums), np.ascontiguousarray(packed.seeds), flags)


class KeyedCropDecoder(ResizedCropRGBImageDecoder):
    """JPEG -> crop -> resize -> mirror, per sample, keyed on (seed, epoch, sample index).

    ``train``: torchvision's random-resized crop and a mirror with probability 0.5;
    otherwise a centre crop of ``eval_crop`` x the shorter side and no mirror.

    Only the crop is decoded: rows above it are skipped without IDCT, the entropy decoder
    stops after its last row, and only its columns (widened to whole iMCUs) are
    IDCT-transformed, upsampled and colour-converted (:mod:`fastvip.loaders.jpeg`, libjpeg-turbo's
    ``jpeg_skip_scanlines``/``jpeg_crop_scanline``; bit-identical to cropping a whole decode).
    The crop is decoded at the smallest DCT scale n/8 (n = 8, 4, 2, 1) at which it still
    covers the output, so a crop much larger than the output is never decoded at full size.
    FFCV's own crop decode (``tjTransform``) was measured slower than a whole decode and is
    not used. See benchmarks/RESULTS.md.

    ``views > 1`` (two-view batches): the JPEG is decoded once and ``views`` crops with
    independent keys (:func:`fastvip.loaders.keyed.view_key`) are cut from it, stacked vertically.

    The output size is read once per batch (:meth:`set_size`, up to the size it was built for):
    a smaller one is written contiguously at the start of each sample's slot, and the loader
    views it as a smaller batch (:func:`_view_size`), so progressive resizing compiles nothing new.
    """

    def __init__(self, output_size, train: bool, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 eval_crop: float = 0.875, views: int = 1):
        # ``views`` independent crops of one decode, stacked vertically (views * h, w)
        super().__init__((output_size[0] * views, output_size[1]))
        self.view_size = tuple(output_size)
        self.views = views
        self.train, self.scale, self.ratio, self.eval_crop = train, scale, ratio, eval_crop
        self.token = next(_TOKENS)
        _KEYS[self.token] = np.uint64(0)
        _SIZES[self.token] = int(output_size[0])

    def set_key(self, key) -> None:
        _KEYS[self.token] = np.uint64(key)

    def set_size(self, size: int) -> None:
        _SIZES[self.token] = int(size)

    @property
    def get_crop_generator(self):  # required by the base class; generate_code replaces its use
        raise NotImplementedError

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        token, train, eval_crop = self.token, self.train, float(self.eval_crop)
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        r_lo, r_hi = float(np.log(self.ratio[0])), float(np.log(self.ratio[1]))
        views = int(self.views)

        # the per-sample work is _keyed_sample, compiled once and cached on disk: this loop
        # (FFCV compiles it for each loader) stays small
        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            with objmode(key="uint64", size="int64", expected="uint64[::1]", seeds="uint64[::1]",
                         flags="uint8[::1]"):
                key = _current_key(token)
                size = _current_size(token)
                expected, seeds, flags = _current_checks(token)
            check = len(expected) > 0
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                if check and xxh3_seeded(image_data, seeds[source_ix]) != expected[source_ix]:
                    flags[source_ix] = FLAG_CHECKSUM  # the loader leaves it out or stops
                    continue
                # train and views as plain values: literal arguments defeat numba's cache
                if _keyed_sample(image_data, np.int64(field["height"]), np.int64(field["width"]),
                                 field["mode"] == 0, source_ix, key, np.bool_(train), s_lo, s_hi, r_lo, r_hi,
                                 eval_crop, np.int64(views), size, temp_storage[dst_ix], destination[dst_ix]):
                    flags[source_ix] = FLAG_WARNED
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


@njit(cache=True, nogil=True)
def _keyed_sample(image_data, height, width, jpeg, source_ix, key, train, s_lo, s_hi, r_lo, r_hi, eval_crop,
                  views, size, buf, slot_out):
    """One sample of :class:`KeyedCropDecoder`: its ``views`` keyed crops of ``size`` decoded
    from the stored bytes (a JPEG, or raw pixels) into the start of its slot ``slot_out``.
    Returns libjpeg's warnings in the rows decoded (the last row's crop reads to the end marker),
    or 1 when no decoder could decode it."""
    out_h, out_w = size, size
    crops = np.empty((views, 4), dtype=np.int64)
    num = 8  # DCT scale num/8: the smallest at which every crop still covers the output
    for v in range(views):
        top, left, h, w = crop_window(height, width, view_key(key, v), source_ix, train,
                                      s_lo, s_hi, r_lo, r_hi, eval_crop)
        crops[v, 0], crops[v, 1], crops[v, 2], crops[v, 3] = top, left, h, w
        n = 8
        while n > 1 and h * (n // 2) >= 8 * out_h and w * (n // 2) >= 8 * out_w:
            n //= 2
        if v == 0 or n > num:
            num = n
    # decode only the rows and columns the crops need (their union for two views)
    top0, left0 = crops[0, 0], crops[0, 1]
    bot0, right0 = top0 + crops[0, 2], left0 + crops[0, 3]
    for v in range(1, views):
        top0, left0 = min(top0, crops[v, 0]), min(left0, crops[v, 1])
        bot0, right0 = max(bot0, crops[v, 0] + crops[v, 2]), max(right0, crops[v, 1] + crops[v, 3])
    r_base, c_base = np.int64(0), np.int64(0)  # the decoded region's origin, scaled pixels
    sh, sw = height, width
    info = np.zeros(6, dtype=np.int64)
    if jpeg:
        if decode_region(image_data, buf, top0, left0, bot0 - top0, right0 - left0, num, info) == 0:
            sh, sw = info[3], info[4]
            r_base, c_base = (top0 * num) // 8, (left0 * num) // 8 - info[2]
            image = buf[:info[0] * info[1] * 3].reshape(info[0], info[1], 3)
        else:  # libjpeg refused the region decode: decode it whole, as FFCV would
            sh, sw = (height * num + 7) // 8, (width * num + 7) // 8
            if imdecode(image_data, buf, height, width, height, width, 0, 0, num, 8, False, False) != 0:
                info[5] = 1  # TurboJPEG could not decode it either: damaged
            image = buf[:sh * sw * 3].reshape(sh, sw, 3)
    else:
        image = image_data.reshape(height, width, 3)
    # the views of this size, contiguous at the start of the sample's slot
    slot = slot_out.reshape(slot_out.size)[:views * out_h * out_w * 3]
    slot = slot.reshape(views * out_h, out_w, 3)
    for v in range(views):
        top, left, h, w = crops[v, 0], crops[v, 1], crops[v, 2], crops[v, 3]
        out = slot[v * out_h:(v + 1) * out_h]
        mirror = train and uniform(view_key(key, v), source_ix, DRAW_FLIP) < 0.5
        if jpeg:
            r0, c0 = (top * num) // 8 - r_base, (left * num) // 8 - c_base
            r1 = min(sh, max(r0 + r_base + 1, ((top + h) * num) // 8)) - r_base
            c1 = min(sw, max(c0 + c_base + 1, ((left + w) * num) // 8)) - c_base
        else:
            r0, r1, c0, c1 = top, top + h, left, left + w
        if r1 - r0 >= out_h and c1 - c0 >= out_w:
            # shrinking: INTER_AREA's weights with the mirror folded in, 2-4x faster
            # than OpenCV's generic area resize (benchmarks/RESULTS.md)
            resize(image, r0, r1, c0, c1, out, mirror)
            continue
        resize_crop(image, r0, r1, c0, c1, out)  # growing: OpenCV's fast linear path
        if mirror:
            mirror_in_place(out)
    return info[5]


class CanvasDecoder(ResizedCropRGBImageDecoder):
    """The whole image, undistorted, in the top-left corner of a zero canvas as large as the
    file's largest image: test-time views are then cut from it on the device in batches
    (:mod:`fastvip.infer.tta`), so each image is decoded once whatever the number of views."""

    def __init__(self):
        super().__init__((0, 0))
        self.token = next(_TOKENS)

    def declare_state_and_memory(self, previous_state):
        from dataclasses import replace
        from ffcv.pipeline.allocation_query import AllocationQuery
        hmax, wmax = int(self.metadata["height"].max()), int(self.metadata["width"].max())
        shape, u8 = (hmax, wmax, 3), np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=u8),
                (AllocationQuery(shape, u8), AllocationQuery((hmax * wmax * 3,), u8)))

    @property
    def get_crop_generator(self):
        raise NotImplementedError

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        token = self.token

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            with objmode(expected="uint64[::1]", seeds="uint64[::1]", flags="uint8[::1]"):
                expected, seeds, flags = _current_checks(token)
            check = len(expected) > 0
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                out = destination[dst_ix]
                out[:] = 0
                if check and xxh3_seeded(image_data, seeds[source_ix]) != expected[source_ix]:
                    flags[source_ix] = 1
                    continue
                _canvas_sample(image_data, np.int64(field["height"]), np.int64(field["width"]), field["mode"] == 0,
                               temp_storage[dst_ix], out)
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


@njit(cache=True, nogil=True)
def _canvas_sample(image_data, height, width, jpeg, buf, out):
    """One sample of :class:`CanvasDecoder`: the whole image in the top-left corner of ``out``."""
    if jpeg:
        imdecode(image_data, buf, height, width, height, width, 0, 0, 1, 1, False, False)
        out[:height, :width] = buf[:3 * height * width].reshape(height, width, 3)
    else:
        out[:height, :width] = image_data.reshape(height, width, 3)


class _Order(TraversalOrder):
    """fastvip's traversal order (:func:`fastvip.loaders.keyed.train_order`): this rank's part of a seeded
    per-epoch permutation or of P x K batches (train), or this rank's eval shard in file order.

    FFCV instantiates orders with ``order(loader)``; this instance binds itself. FFCV's own
    ``distributed`` flag stays off: the sharding is done here.
    """

    def __init__(self, train: bool, seed: int, batch_size: int, world: int, rank: int, labels, pk: int):
        self.train, self.seed, self.batch_size = train, seed, batch_size
        self.world, self.rank, self.labels, self.pk = world, rank, labels, pk
        self.indices = None
        self.skip = 0  # samples of the next pass to leave out (a run resumed mid-epoch)
        self._cache: tuple[int, np.ndarray] | None = None

    def __call__(self, loader):
        self.loader = loader
        self.indices = loader.indices
        self.distributed = False
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return self.indices
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, train_order(self.seed, epoch, self.indices, self.batch_size * self.world,
                                              world=self.world, rank=self.rank, labels=self.labels,
                                              pk=self.pk))
        return self._cache[1][self.skip:]


class _SlotSafeIterator(EpochIterator):
    """FFCV's epoch iterator, waiting on the host before it refills a slot.

    FFCV cycles through ``batches_ahead + 2`` slots. Before refilling one, its producer thread
    makes the slot's CUDA stream wait for the consumer's work on the slot's last batch
    (``event.wait()``: a wait on the GPU only). But the refill is a decode on the host into the
    slot's pinned buffer, which that batch's host-to-device copy may still be reading when the
    CPU runs ahead of the GPU, as it does with a step that reads nothing back. The event marks
    the consumer's work on that batch, which waited for its copy: waiting for it on the host
    (``event.synchronize()``) first leaves the buffer alone until the copy is done."""

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        if cuda_event is not None:
            cuda_event.synchronize()
        return super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)


class _Loader(_FFCVLoader):
    """FFCV's ``Loader`` whose epochs run :class:`_SlotSafeIterator` (its ``__iter__`` otherwise)."""

    def __iter__(self):
        Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()
        selected = order[:len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        return _SlotSafeIterator(self, selected)


def _fits_in_ram(path) -> bool:
    try:
        import psutil
        return os.path.getsize(path) < 0.5 * psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - unknown memory: assume it fits (FFCV's default)
        return True


class FFCVLoader(EpochState):
    """The FFCV path of the loader interface (see :mod:`fastvip.loaders`)."""

    name = "ffcv"

    def __init__(self, path, *, train: bool, batch_size: int, image_size: int,
                 device: torch.device, seed: int = 0, workers: int = 0, eval_crop: float = 0.875,
                 crop_scale: tuple[float, float] = (0.08, 1.0), views: int = 1, pk: int = 0, indices=None,
                 batches_ahead: int = 3, canvas: bool = False, skip_damaged: bool = False):
        self.packed = open_packed(path)
        self.skip_damaged = skip_damaged
        self.rank, self.world, local = process_batch(batch_size, train, pk)
        self.train, self.batch_size, self.device, self.seed = train, local, device, seed
        self.views = views if train else 1
        self.epoch = 0
        self.image_size = self.size = image_size  # the largest output size, and this epoch's
        self.start_batch = 0
        self.os_cache = _fits_in_ram(path)
        if canvas:  # whole images for test-time views (eval only)
            self._decoder = CanvasDecoder()
        else:
            self._decoder = KeyedCropDecoder((image_size, image_size), train=train, scale=crop_scale,
                                             eval_crop=eval_crop, views=self.views)
        self._damaged = np.zeros(self.packed.num_samples, np.uint8)  # set by the decoder, read per batch
        set_checks(self._decoder.token, self.packed, self._damaged)
        non_blocking = device.type == "cuda"
        pipelines = {
            "image": [self._decoder, ToTensor(), ToDevice(device, non_blocking=non_blocking),
                      ToTorchImage(channels_last=True)],
            "label": [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=non_blocking)],
        }
        # fastvip's id, and whatever else a file written by FFCV's own tools holds, stay undecoded
        pipelines.update({name: None for name in self.packed.fields if name not in pipelines})
        all_idx = np.arange(self.packed.num_samples) if indices is None else np.asarray(indices)
        if not train:
            all_idx = eval_shard(all_idx, self.world, self.rank)
        if train and pk and self.packed.labels is None:
            raise FastvipError(f"P x K batches need labels; {path} is unlabelled")
        self._order = _Order(train, seed, local, self.world, self.rank, self.packed.labels, pk)
        self._loader = _Loader(
            os.fspath(path), batch_size=local, num_workers=workers or default_workers(),
            # The process cache with a random order reads whole pages; the OS cache is
            # better whenever the file fits in RAM (and is shared between processes).
            os_cache=self.os_cache, order=self._order, drop_last=train, pipelines=pipelines,
            batches_ahead=batches_ahead, seed=seed, indices=all_idx)
        torch.set_num_threads(torch_threads())  # FFCV's import and Loader set it (torch_threads)
        self.num_samples = len(self._order.sample_order(0)) if train else len(all_idx)

    def set_epoch(self, epoch: int, image_size: int | None = None, start_batch: int = 0) -> None:
        # whole-image canvases (test-time views) have no output size to change
        keyed = isinstance(self._decoder, KeyedCropDecoder)
        super().set_epoch(epoch, image_size if keyed else None, start_batch)

    def __len__(self) -> int:
        return len(self._loader)

    def _without_flagged(self, flags: np.ndarray, idx: np.ndarray, images, labels):
        """The batch without the rows of the samples its decode flagged (:func:`set_checks`)."""
        from fastvip.data.packed import CHECKSUM_MISMATCH, JPEG_WARNED
        for flag, why in ((FLAG_CHECKSUM, CHECKSUM_MISMATCH), (FLAG_WARNED, JPEG_WARNED)):
            bad = flags == flag
            if bad.any():
                images, labels = self.without_damaged(bad, idx[bad], images, labels, why)
                flags, idx = flags[~bad], idx[~bad]
        return images, labels

    def __iter__(self):
        size = self.size
        if isinstance(self._decoder, KeyedCropDecoder):
            # numba hands the uint64 back as a Python int; keep it unsigned
            self._decoder.set_key(np.uint64(epoch_key(self.seed, self.epoch)))
            self._decoder.set_size(size)
        self._loader.next_epoch = self.epoch
        self._order.skip = self.start_batch * self.batch_size
        # this pass's verdicts only: a warning depends on the crop, which depends on the epoch
        # (the last pass's producer thread has stopped: _stop)
        self._damaged[:] = 0
        try:
            it = iter(self._loader)
            order = self._order.sample_order(self.epoch)  # what FFCV cuts its batches from, in order
        finally:  # the skip is for this pass only
            self._order.skip = self.start_batch = 0
        try:
            for b, (images, labels) in enumerate(it):
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                flags = self._damaged[idx]
                if flags.any():
                    images, labels = self._without_flagged(flags, idx, images, labels)
                if size != self.image_size:
                    images = _view_size(images, self.views, size)
                if self.views == 1:
                    yield images, labels
                else:  # (n, 3, views*h, w) -> views stacked on the batch axis
                    yield torch.cat(images.chunk(self.views, dim=2)), labels.repeat(self.views)
        finally:
            _stop(it)


def _view_size(images: torch.Tensor, views: int, size: int) -> torch.Tensor:
    """A batch decoded at ``size`` into slots allocated for a larger size (each sample's
    ``views * size x size`` pixels contiguous at the start of its slot) as an
    ``(n, 3, views * size, size)`` view: no copy, channels-last within each sample."""
    n = images.shape[0]
    flat = images.permute(0, 2, 3, 1).reshape(n, -1)  # the slots, NHWC as decoded
    return flat[:, :views * size * size * 3].reshape(n, views * size, size, 3).permute(0, 3, 1, 2)


def _stop(it) -> None:
    """Stop FFCV's producer thread before its buffers go away (also on early exit).

    It notices ``terminate_event`` only when its queue is full, and it blocks on a
    full queue to post its end marker, so drain the queue until the thread is gone.
    """
    it.terminate_event.set()
    it.join(timeout=2.0)
    while it.is_alive():
        try:
            while True:
                it.output_queue.get_nowait()
        except queue.Empty:
            pass
        it.join(timeout=0.1)
    it.close()

