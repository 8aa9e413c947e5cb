"""DALI loader: the same ``fastvip pack`` file, decoded by a DALI pipeline.

The stored JPEG bytes enter the pipeline through ``fn.external_source`` together
with each sample's crop window and mirror flag, computed by the same keyed
functions as the FFCV loader (:mod:`loaders.keyed`). Both loaders therefore cut
the same crops, and a resumed run sees the same data. DALI decodes only the
window: ``fn.decoders.image_slice`` is nvJPEG's ROI decode on the GPU
(``device="mixed"``) or libjpeg-turbo on the CPU (``device_id=None``). It then
resizes to ``image_size`` and mirrors in ``crop_mirror_normalize`` (uint8, CHW).

The source is stateless: a batch is a pure function of (epoch, batch number), so
it can run in the calling thread (``source_workers=0``, the default: measured
faster, see benchmarks/RESULTS.md) or in DALI's parallel worker processes
(``source_workers=N``, spawned, each opening the file lazily). Sharding and the
per-epoch order are done in the source (reader ``shard_id``/``num_shards`` do not
apply to external sources).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from fastvip.errors import FastvipError
from fastvip.pack import open_packed

from .keyed import crop_windows, epoch_key, epoch_order, flip_mask


def _shard() -> tuple[int, int]:
    """(rank, world size) from torch.distributed, (0, 1) when it is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BatchSource:
    """Picklable batch callable: ``(epoch, batch) -> (jpegs, anchors, shapes, mirror, labels)``."""

    def __init__(self, path, ptrs, sizes, heights, widths, labels, indices, *, train, batch_size, seed,
                 rank, world, base_epoch, crop_scale, eval_crop):
        self.path, self.ptrs, self.sizes = os.fspath(path), ptrs, sizes
        self.heights, self.widths, self.labels, self.indices = heights, widths, labels, indices
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.rank, self.world, self.base_epoch = rank, world, base_epoch
        self.crop_scale, self.eval_crop = crop_scale, eval_crop
        self._data = None

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's samples for ``epoch``, in order."""
        if self.train:
            order = epoch_order(self.seed, epoch, self.indices)
            per_rank = len(order) // self.world  # equal shards: every rank takes the same steps
            return order[self.rank * per_rank:(self.rank + 1) * per_rank]
        return np.array_split(self.indices, self.world)[self.rank]  # every sample once overall

    def __call__(self, info):
        epoch = self.base_epoch + info.epoch_idx
        mine = self.shard(epoch)
        start = info.iteration * self.batch_size
        idx = mine[start:start + self.batch_size]
        if len(idx) == 0 or (self.train and len(idx) < self.batch_size):
            raise StopIteration  # train drops the last partial batch; eval keeps it
        if self._data is None:  # opened lazily, also in each worker process
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        key = np.uint64(epoch_key(self.seed, epoch))
        idx = idx.astype(np.uint64)
        win = crop_windows(key, idx, self.heights, self.widths, self.train, float(self.crop_scale[0]),
                           float(self.crop_scale[1]), float(np.log(3 / 4)), float(np.log(4 / 3)),
                           float(self.eval_crop))
        mirror = flip_mask(key, idx) if self.train else np.zeros(len(idx), bool)
        jpegs = [np.array(self._data[self.ptrs[i]:self.ptrs[i] + self.sizes[i]]) for i in idx]
        anchors = [np.array([w[1], w[0]], np.float32) for w in win]   # (x, y)
        shapes = [np.array([w[3], w[2]], np.float32) for w in win]    # (w, h)
        return (jpegs, anchors, shapes, [np.array(m, np.int32) for m in mirror],
                [np.array(self.labels[i], np.int64) for i in idx])


class DALILoader:
    """The DALI path of the loader interface (see :mod:`loaders`)."""

    name = "dali"

    def __init__(self, path, *, train: bool, batch_size: int, image_size: int, device: torch.device,
                 seed: int = 0, workers: int = 0, eval_crop: float = 0.875,
                 crop_scale: tuple[float, float] = (0.08, 1.0), auto_augment: bool = False, indices=None,
                 source_workers: int = 0):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise FastvipError("loader 'dali' needs NVIDIA DALI: pip install 'fastvip[dali]'") from None
        from ffcv.reader import Reader
        self.packed = open_packed(path)
        reader = Reader(os.fspath(path))
        image_md = reader.metadata[f"f{reader.field_names.index('image')}"]
        if (image_md["mode"] != 0).any():
            raise FastvipError(f"{path} stores raw pixels for {int((image_md['mode'] != 0).sum())} images; "
                               "the DALI loader reads JPEG storage only (re-pack with fastvip pack)")
        # FFCV keeps no per-image byte count; its allocation table maps each pointer to a size.
        table = np.sort(reader.alloc_table, order="ptr")
        pos = np.searchsorted(table["ptr"], image_md["data_ptr"])
        sizes = table["size"][pos].astype(np.int64)
        self.train, self.batch_size, self.device, self.seed = train, batch_size, device, seed
        self.image_size, self.workers, self.source_workers = image_size, workers, source_workers
        self.auto_augment = auto_augment
        self.rank, self.world = _shard()
        all_idx = np.arange(self.packed.num_samples) if indices is None else np.asarray(indices)
        self._source_args = (path, image_md["data_ptr"].astype(np.int64), sizes,
                             image_md["height"].astype(np.int64), image_md["width"].astype(np.int64),
                             self.packed.labels, all_idx)
        self._source_kw = dict(train=train, batch_size=batch_size, seed=seed, rank=self.rank, world=self.world,
                               crop_scale=crop_scale, eval_crop=eval_crop)
        probe = BatchSource(*self._source_args, base_epoch=0, **self._source_kw)
        self.num_samples = len(probe.shard(0))
        self.epoch = 0
        self._pipe, self._next_epoch = None, None

    @property
    def classes(self) -> list[str]:
        return self.packed.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        cuda = self.device.type == "cuda"
        source = BatchSource(*self._source_args, base_epoch=self.epoch, **self._source_kw)
        size = self.image_size
        parallel = self.source_workers > 0
        # DALI's own random ops (AutoAugment) draw from the pipeline's RNG: seed it per epoch
        # (and rebuild every epoch, see __iter__) so a resumed run draws what an unbroken one did.
        dali_seed = int(epoch_key(self.seed, self.epoch) % np.uint64(2**31 - 1))

        @pipeline_def(batch_size=self.batch_size, num_threads=self.workers or (os.cpu_count() or 1),
                      device_id=(self.device.index or 0) if cuda else None, seed=dali_seed,
                      py_num_workers=max(1, self.source_workers), py_start_method="spawn",
                      enable_conditionals=self.auto_augment)
        def pipeline():
            jpegs, anchor, shape, mirror, labels = fn.external_source(
                source=source, num_outputs=5, batch=True, batch_info=True, parallel=parallel)
            images = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed" if cuda else "cpu",
                                             output_type=types.RGB, axis_names="WH",
                                             normalized_anchor=False, normalized_shape=False)
            images = fn.resize(images, size=(size, size), antialias=True)
            if self.auto_augment:  # per-sample ImageNet policy, on the GPU with device="mixed"
                images = _auto_augment(images, size)
            images = fn.crop_mirror_normalize(images, mirror=mirror, output_layout="CHW", dtype=types.UINT8)
            return images, labels.gpu() if cuda else labels

        pipe = pipeline()
        if parallel:
            pipe.start_py_workers()
        pipe.build()
        return pipe

    def __iter__(self):
        if self._pipe is None or self._next_epoch != self.epoch or self.auto_augment:
            self._pipe = None  # a new base epoch (or an interrupted one): rebuild
            self._pipe = self._build()
        pipe, finished = self._pipe, False
        try:
            while True:
                try:
                    images, labels = pipe.run()
                except StopIteration:
                    finished = True
                    break
                yield _to_torch(images, self.device), _to_torch(labels, self.device)
        finally:
            if finished:
                pipe.reset()
                self._next_epoch = self.epoch + 1 if self.train else self.epoch
            else:
                self._pipe = None  # stopped early: prefetched batches are stale


def _auto_augment(images, size: int):
    """DALI's ImageNet AutoAugment, without the deprecation notice it forces on for an
    alias it uses internally (it resets warning filters, so only ``showwarning`` reaches it)."""
    from nvidia.dali.auto_aug import auto_augment
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def quiet(message, *args, **kwargs):
            if "moved out from the experimental phase" not in str(message):
                shown(message, *args, **kwargs)
        warnings.showwarning = quiet
        return auto_augment.auto_augment_image_net(images, shape=[size, size])


def _to_torch(batch, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (uniform shapes) -> a torch tensor on ``device``."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray
        dense = batch.as_tensor()
        dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int64): torch.int64}[np.dtype(dense.dtype)]
        out = torch.empty(dense.shape(), dtype=dtype, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(batch.as_tensor()))
