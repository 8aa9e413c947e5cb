"""FFCV loader: reads a ``fastvip pack`` file with FFCV's compiled JPEG pipeline.

Train: random-resized-crop decode (scale 0.08-1, ratio 3/4-4/3) to
``image_size``, then a random horizontal flip on the device. Eval: centre crop
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
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.loader import Loader as _FFCVLoader
from ffcv.pipeline.compiler import Compiler
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from fastvip.pack import open_packed

from .keyed import epoch_key, epoch_order, flip_mask, random_resized_crop

# The per-batch objmode call that fetches the epoch key is the only Python in the
# decoder; numba warns that it holds the GIL, which is what we want there.
warnings.filterwarnings("ignore", message=".*object mode won't allow parallel execution.*")

_KEYS: dict[int, np.uint64] = {}
_TOKENS = itertools.count()


def _current_key(token):
    return _KEYS[token]


class KeyedRandomResizedCropDecoder(ResizedCropRGBImageDecoder):
    """FFCV's random-resized-crop JPEG decoder with crops keyed on (seed, epoch, index)."""

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__(output_size)
        self.scale, self.ratio = scale, ratio
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
        token = self.token
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        r_lo, r_hi = float(np.log(self.ratio[0])), float(np.log(self.ratio[1]))
        jpg = 0  # FFCV's IMAGE_MODES['jpg']

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            with objmode(key="uint64"):
                key = _current_key(token)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    buf = temp_storage[dst_ix]
                    imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, 1,
                               False, False)
                    image = buf.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                top, left, h, w = random_resized_crop(height, width, key, source_ix,
                                                      s_lo, s_hi, r_lo, r_hi)
                resize_crop_c(image, top, top + h, left, left + w, destination[dst_ix])
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
                 crop_scale: tuple[float, float] = (0.08, 1.0), indices=None, batches_ahead: int = 3):
        self.packed = open_packed(path)
        self.train, self.batch_size, self.device, self.seed = train, batch_size, device, seed
        self.epoch = 0
        self.os_cache = _fits_in_ram(path)
        size = (image_size, image_size)
        if train:
            self._decoder = KeyedRandomResizedCropDecoder(size, scale=crop_scale)
        else:
            self._decoder = CenterCropRGBImageDecoder(size, ratio=eval_crop)
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
        key = np.uint64(epoch_key(self.seed, self.epoch))  # numba returns a Python int
        if self.train:
            self._decoder.set_key(key)
        order = self._order.sample_order(self.epoch)
        self._loader.next_epoch = self.epoch
        it = iter(self._loader)
        try:
            for b, (images, labels) in enumerate(it):
                if self.train:
                    idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                    mask = torch.from_numpy(flip_mask(key, idx)).to(self.device, non_blocking=True)
                    images = torch.where(mask[:, None, None, None], images.flip(3), images)
                yield images, labels
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
