"""FFCV loader: reads a ``fastvip pack`` file with FFCV's compiled JPEG pipeline.

Train: random-resized-crop decode (scale 0.08-1, ratio 3/4-4/3) to
``image_size`` and a random horizontal flip, both inside FFCV's compiled, parallel
decode loop (a flip on the device cost 13% on CPU). Eval: centre crop
of ``eval_crop`` x the shorter side resized to ``image_size`` (= resize the
shorter side to ``image_size / eval_crop`` and centre-crop), every sample once.

Crops and flips are keyed on (seed, epoch, sample index) (:mod:`loaders.keyed`)
instead of FFCV's unseeded numba RNG. The decoder gets the epoch's key once
per batch through a numba ``objmode`` call, so the pipeline is compiled once
and never recompiled per epoch. The sample order is fastvip's own
(:func:`loaders.keyed.epoch_order`), not FFCV's quasi-random order.
"""
from __future__ import annotations

import itertools
import os
import queue
import warnings

import numpy as np
import torch
from numba import objmode

from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.loader import Loader as _FFCVLoader
from ffcv.pipeline.compiler import Compiler
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from fastvip.pack import open_packed

from .keyed import DRAW_FLIP, crop_window, epoch_key, epoch_order, uniform

# The per-batch objmode call that fetches the epoch key is the only Python in the
# decoder; numba warns that it holds the GIL, which is what we want there.
warnings.filterwarnings("ignore", message=".*object mode won't allow parallel execution.*")

_KEYS: dict[int, np.uint64] = {}
_TOKENS = itertools.count()


def _current_key(token):
    return _KEYS[token]


class KeyedCropDecoder(ResizedCropRGBImageDecoder):
    """JPEG -> crop -> resize -> mirror, per sample, keyed on (seed, epoch, sample index).

    ``train``: torchvision's random-resized crop and a mirror with probability 0.5;
    otherwise a centre crop of ``eval_crop`` x the shorter side and no mirror.

    The JPEG is decoded at the smallest DCT scale n/8 (n = 8, 4, 2, 1) at which the crop
    still covers the output, so a crop much larger than the output is never decoded at
    full size (measured 1.2-1.45x faster per image at 112 and 64 px output; at 224 px
    from 512-px packs the scale stays 1). Decoding only the crop region through
    ``tjTransform`` was measured slower than a whole decode (it Huffman-decodes the whole
    image, then re-encodes and decodes the region) and is not used. See benchmarks/RESULTS.md.
    """

    def __init__(self, output_size, train: bool, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 eval_crop: float = 0.875):
        super().__init__(output_size)
        self.train, self.scale, self.ratio, self.eval_crop = train, scale, ratio, eval_crop
        self.token = next(_TOKENS)
        _KEYS[self.token] = np.uint64(0)

    def set_key(self, key) -> None:
        _KEYS[self.token] = np.uint64(key)

    @property
    def get_crop_generator(self):  # required by the base class; generate_code replaces its use
        raise NotImplementedError

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        token, train, eval_crop = self.token, self.train, float(self.eval_crop)
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        r_lo, r_hi = float(np.log(self.ratio[0])), float(np.log(self.ratio[1]))
        out_h, out_w = int(self.output_size[0]), int(self.output_size[1])
        jpg = 0  # FFCV's IMAGE_MODES['jpg']

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            with objmode(key="uint64"):
                key = _current_key(token)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                top, left, h, w = crop_window(height, width, key, source_ix, train,
                                              s_lo, s_hi, r_lo, r_hi, eval_crop)
                out = destination[dst_ix]
                if field["mode"] == jpg:
                    num = 8  # DCT scale num/8: halve while the crop still covers the output
                    while num > 1 and h * (num // 2) >= 8 * out_h and w * (num // 2) >= 8 * out_w:
                        num //= 2
                    sh, sw = (height * num + 7) // 8, (width * num + 7) // 8
                    buf = temp_storage[dst_ix]
                    imdecode_c(image_data, buf, height, width, height, width, 0, 0, num, 8, False, False)
                    image = buf[:sh * sw * 3].reshape(sh, sw, 3)
                    r0, c0 = (top * num) // 8, (left * num) // 8
                    r1 = min(sh, max(r0 + 1, ((top + h) * num) // 8))
                    c1 = min(sw, max(c0 + 1, ((left + w) * num) // 8))
                    resize_crop_c(image, r0, r1, c0, c1, out)
                else:
                    image = image_data.reshape(height, width, 3)
                    resize_crop_c(image, top, top + h, left, left + w, out)
                if train and uniform(key, source_ix, DRAW_FLIP) < 0.5:
                    for r in range(out_h):
                        for c in range(out_w // 2):
                            for ch in range(3):
                                t = out[r, c, ch]
                                out[r, c, ch] = out[r, out_w - 1 - c, ch]
                                out[r, out_w - 1 - c, ch] = t
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class CanvasDecoder(ResizedCropRGBImageDecoder):
    """The whole image, undistorted, in the top-left corner of a zero canvas as large as the
    file's largest image: test-time views are then cut from it on the device in batches
    (:mod:`fastvip.tta`), so each image is decoded once whatever the number of views."""

    def __init__(self):
        super().__init__((0, 0))

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
        imdecode_c = Compiler.compile(imdecode)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                out = destination[dst_ix]
                out[:] = 0
                if field["mode"] == 0:  # jpg
                    buf = temp_storage[dst_ix]
                    imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, 1, False, False)
                    out[:height, :width] = buf[:3 * height * width].reshape(height, width, 3)
                else:
                    out[:height, :width] = image_data.reshape(height, width, 3)
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class _Order(TraversalOrder):
    """fastvip's traversal order: seeded per-epoch permutation (train) or file order (eval).

    FFCV instantiates orders with ``order(loader)``; this instance binds itself.
    """

    def __init__(self, shuffle: bool, seed: int):
        self.shuffle, self.seed = shuffle, seed
        self.indices = None
        self._cache: tuple[int, np.ndarray] | None = None

    def __call__(self, loader):
        self.loader = loader
        self.indices = loader.indices
        self.distributed = False
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, epoch_order(self.seed, epoch, self.indices))
        return self._cache[1]


def _fits_in_ram(path) -> bool:
    try:
        import psutil
        return os.path.getsize(path) < 0.5 * psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - unknown memory: assume it fits (FFCV's default)
        return True


class FFCVLoader:
    """The FFCV path of the loader interface (see :mod:`loaders`)."""

    name = "ffcv"

    def __init__(self, path, *, train: bool, batch_size: int, image_size: int,
                 device: torch.device, seed: int = 0, workers: int = 0, eval_crop: float = 0.875,
                 crop_scale: tuple[float, float] = (0.08, 1.0), auto_augment: bool = False, indices=None,
                 batches_ahead: int = 3, canvas: bool = False):
        if auto_augment:
            from fastvip.errors import FastvipError
            raise FastvipError("auto_augment=true needs loader=dali for now: the FFCV path's batched "
                               "GPU AutoAugment comes with the DeepBlueAI-method issue")
        self.packed = open_packed(path)
        self.train, self.batch_size, self.device, self.seed = train, batch_size, device, seed
        self.epoch = 0
        self.os_cache = _fits_in_ram(path)
        if canvas:  # whole images for test-time views (eval only)
            self._decoder = CanvasDecoder()
        else:
            self._decoder = KeyedCropDecoder((image_size, image_size), train=train, scale=crop_scale,
                                             eval_crop=eval_crop)
        non_blocking = device.type == "cuda"
        pipelines = {
            "image": [self._decoder, ToTensor(), ToDevice(device, non_blocking=non_blocking),
                      ToTorchImage(channels_last=True)],
            "label": [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=non_blocking)],
            "id": None,
        }
        self._order = _Order(shuffle=train, seed=seed)
        self._loader = _FFCVLoader(
            os.fspath(path), batch_size=batch_size, num_workers=workers or (os.cpu_count() or 1),
            # The process cache with a random order reads whole pages; the OS cache is
            # better whenever the file fits in RAM (and is shared between processes).
            os_cache=self.os_cache, order=self._order, drop_last=train, pipelines=pipelines,
            batches_ahead=batches_ahead, seed=seed, indices=indices)
        self.num_samples = len(self._loader.indices)

    @property
    def classes(self) -> list[str]:
        return self.packed.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        if isinstance(self._decoder, KeyedCropDecoder):
            # numba hands the uint64 back as a Python int; keep it unsigned
            self._decoder.set_key(np.uint64(epoch_key(self.seed, self.epoch)))
        self._loader.next_epoch = self.epoch
        it = iter(self._loader)
        try:
            yield from it
        finally:
            _stop(it)


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
