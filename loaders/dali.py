"""DALI loader: the same ``fastvip pack`` file, decoded by a DALI pipeline.

The stored JPEG bytes enter the pipeline through ``fn.external_source`` together
with each sample's crop window and mirror flag, computed by the same keyed
functions as the FFCV loader (:mod:`fastvip.loaders.keyed`). Both loaders therefore cut
the same crops, and a resumed run sees the same data. DALI decodes only the
window: ``fn.decoders.image_slice`` is nvJPEG's ROI decode on the GPU
(``device="mixed"``) or libjpeg-turbo on the CPU (``device_id=None``). It then
resizes to the epoch's output size (``image_size``, or what ``set_epoch`` asks for: the
pipeline is rebuilt when it changes, a few times per progressive-resizing ramp) and
mirrors in ``crop_mirror_normalize`` (uint8, CHW).

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
from fastvip.data.checksum import image_sums
from fastvip.data.packed import image_records, open_packed

from fastvip.recipe import AUGMENTS

from .keyed import (EpochState, crop_windows, default_workers, epoch_key, eval_shard, flip_mask, process_batch,
                    train_order, view_key)


class BatchSource:
    """Picklable batch callable: ``(epoch, batch) -> (jpegs, anchors, shapes, mirror, labels, damaged)``.

    ``sums``: (checksums, seeds) of every sample, or None for a file without them. A sample whose
    bytes do not match is replaced by a blank JPEG of its size and named in ``damaged`` (its
    index; -1 for sound samples), which stays on the host for the loader to act on."""

    def __init__(self, path, ptrs, sizes, heights, widths, labels, indices, *, train, batch_size, seed,
                 rank, world, base_epoch, crop_scale, eval_crop, views=1, pk=0, start_batch=0, sums=None):
        self.path, self.ptrs, self.sizes = os.fspath(path), ptrs, sizes
        self.heights, self.widths, self.labels, self.indices = heights, widths, labels, indices
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.rank, self.world, self.base_epoch = rank, world, base_epoch
        self.crop_scale, self.eval_crop = crop_scale, eval_crop
        self.views, self.pk = views, pk
        self.start_batch = start_batch  # the first pass starts there (a run resumed mid-epoch)
        self.sums = sums
        self._data = None
        self._order = (None, None)  # (epoch, this rank's samples): computed once per epoch

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's samples for ``epoch``, in order."""
        if self.train:  # every rank takes the same number of whole batches
            return train_order(self.seed, epoch, self.indices, self.batch_size * self.world,
                               world=self.world, rank=self.rank, labels=self.labels, pk=self.pk)
        return eval_shard(self.indices, self.world, self.rank)  # every sample once overall

    def __call__(self, info):
        epoch = self.base_epoch + info.epoch_idx
        if self._order[0] != epoch:  # the order (P x K especially) costs far more than a batch
            self._order = (epoch, self.shard(epoch))
        mine = self._order[1]
        start = (info.iteration + (self.start_batch if info.epoch_idx == 0 else 0)) * self.batch_size
        idx = mine[start:start + self.batch_size]
        if len(idx) == 0 or (self.train and len(idx) < self.batch_size):
            raise StopIteration  # train drops the last partial batch; eval keeps it
        if self._data is None:  # opened lazily, also in each worker process
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        key = np.uint64(epoch_key(self.seed, epoch))
        idx = idx.astype(np.uint64)
        # two-view batches: every sample once per view, views one after the other
        keys = [np.uint64(view_key(key, v)) for v in range(self.views)]
        win = np.concatenate([crop_windows(k, idx, self.heights, self.widths, self.train,
                                           float(self.crop_scale[0]), float(self.crop_scale[1]),
                                           float(np.log(3 / 4)), float(np.log(4 / 3)), float(self.eval_crop))
                              for k in keys])
        mirror = (np.concatenate([flip_mask(k, idx) for k in keys]) if self.train
                  else np.zeros(len(idx), bool))
        damaged = np.full(len(idx), -1, np.int64)
        if self.sums is not None:
            sums = image_sums(self._data, self.ptrs[idx], self.sizes[idx], self.sums[1][idx])
            bad = sums != self.sums[0][idx]
            damaged[bad] = idx[bad]
        idx, damaged = np.tile(idx, self.views), np.tile(damaged, self.views)
        jpegs = [np.array(self._data[self.ptrs[i]:self.ptrs[i] + self.sizes[i]]) if d < 0
                 else _blank_jpeg(int(self.heights[i]), int(self.widths[i])) for i, d in zip(idx, damaged)]
        anchors = [np.array([w[1], w[0]], np.float32) for w in win]   # (x, y)
        shapes = [np.array([w[3], w[2]], np.float32) for w in win]    # (w, h)
        return (jpegs, anchors, shapes, [np.array(m, np.int32) for m in mirror],
                [np.array(self.labels[i], np.int64) for i in idx], [np.array(d, np.int64) for d in damaged])


_BLANKS: dict[tuple[int, int], np.ndarray] = {}


def _blank_jpeg(height: int, width: int) -> np.ndarray:
    """A grey JPEG of ``height`` x ``width``: what a damaged sample's slot decodes before it is left out."""
    if (height, width) not in _BLANKS:
        import io
        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (128, 128, 128)).save(buf, "JPEG")
        _BLANKS[height, width] = np.frombuffer(buf.getvalue(), np.uint8)
    return _BLANKS[height, width]


class DALILoader(EpochState):
    """The DALI path of the loader interface (see :mod:`fastvip.loaders`)."""

    name = "dali"
    augments_in_pipeline = True  # AutoAugment / RandAugment are DALI's own, inside the pipeline

    def __init__(self, path, *, train: bool, batch_size: int, image_size: int, device: torch.device,
                 seed: int = 0, workers: int = 0, eval_crop: float = 0.875,
                 crop_scale: tuple[float, float] = (0.08, 1.0), auto_augment: str = "none", views: int = 1,
                 pk: int = 0, indices=None, source_workers: int = 0, skip_damaged: bool = False):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise FastvipError("loader 'dali' needs NVIDIA DALI: pip install 'fastvip[dali]'") from None
        self.packed = open_packed(path)
        self.skip_damaged = skip_damaged
        rec = image_records(path)
        if (rec.modes != 0).any():
            raise FastvipError(f"{path} stores raw pixels for {int((rec.modes != 0).sum())} images; "
                               "the DALI loader reads JPEG storage only (use loader ffcv, or re-pack with "
                               "fastvip pack)")
        self.rank, self.world, local = process_batch(batch_size, train, pk)
        if auto_augment not in AUGMENTS:
            raise FastvipError(f"auto_augment must be one of {', '.join(AUGMENTS)}")
        self.train, self.batch_size, self.device, self.seed = train, local, device, seed
        self.image_size, self.workers, self.source_workers = image_size, workers, source_workers
        self.size = image_size  # this epoch's output size (progressive resizing), up to image_size
        self.start_batch = 0
        self.auto_augment = auto_augment if train else "none"
        self.views = views if train else 1
        all_idx = np.arange(self.packed.num_samples) if indices is None else np.asarray(indices)
        self._source_args = (path, rec.ptrs, rec.sizes, rec.heights, rec.widths, self.packed.labels, all_idx)
        self._source_kw = dict(train=train, batch_size=local, seed=seed, rank=self.rank, world=self.world,
                               crop_scale=crop_scale, eval_crop=eval_crop, views=self.views, pk=pk,
                               sums=None if self.packed.checksums is None else
                               (self.packed.checksums, self.packed.seeds))
        probe = BatchSource(*self._source_args, base_epoch=0, **self._source_kw)
        self.num_samples = len(probe.shard(0))
        self.epoch = 0
        self._pipe, self._next_epoch, self._built_size = None, None, None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        cuda = self.device.type == "cuda"
        source = BatchSource(*self._source_args, base_epoch=self.epoch, start_batch=self.start_batch,
                             **self._source_kw)
        size = self._built_size = self.size
        parallel = self.source_workers > 0
        # DALI's own random ops (AutoAugment) draw from the pipeline's RNG: seed it per epoch
        # (and rebuild every epoch, see __iter__) so a resumed run draws what an unbroken one did.
        dali_seed = int(epoch_key(self.seed, self.epoch) % np.uint64(2**31 - 1))

        augment = self.auto_augment != "none"

        @pipeline_def(batch_size=self.batch_size * self.views, num_threads=self.workers or default_workers(),
                      device_id=(self.device.index or 0) if cuda else None, seed=dali_seed,
                      py_num_workers=max(1, self.source_workers), py_start_method="spawn",
                      enable_conditionals=augment)
        def pipeline():
            jpegs, anchor, shape, mirror, labels, damaged = fn.external_source(
                source=source, num_outputs=6, batch=True, batch_info=True, parallel=parallel)
            images = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed" if cuda else "cpu",
                                             output_type=types.RGB, axis_names="WH",
                                             normalized_anchor=False, normalized_shape=False)
            images = fn.resize(images, size=(size, size), antialias=True)
            if augment:  # per-sample policy, on the GPU with device="mixed"
                images = _auto_augment(images, size, self.auto_augment)
            images = fn.crop_mirror_normalize(images, mirror=mirror, output_layout="CHW", dtype=types.UINT8)
            return images, labels.gpu() if cuda else labels, damaged

        pipe = pipeline()
        if parallel:
            pipe.start_py_workers()
        pipe.build()
        return pipe

    def __iter__(self):
        if (self._pipe is None or self._next_epoch != self.epoch or self.auto_augment != "none"
                or self._built_size != self.size or self.start_batch):
            self._pipe = None  # a new base epoch (or an interrupted one), size or start: rebuild
            self._pipe = self._build()
            self.start_batch = 0  # only the first pass of this pipeline starts late
        pipe, finished = self._pipe, False
        try:
            while True:
                try:
                    images, labels, damaged = pipe.run()
                except StopIteration:
                    finished = True
                    break
                images, labels = _to_torch(images, self.device), _to_torch(labels, self.device)
                damaged = np.array(damaged.as_tensor()).reshape(-1)  # host side: no device sync
                bad = damaged >= 0
                if bad.any():
                    images, labels = self.without_damaged(bad, damaged[bad], images, labels)
                yield images, labels
        finally:
            if finished:
                pipe.reset()
                self._next_epoch = self.epoch + 1 if self.train else self.epoch
            else:
                self._pipe = None  # stopped early: prefetched batches are stale


def _auto_augment(images, size: int, kind: str):
    """DALI's ImageNet AutoAugment or RandAugment (n=2, m=9), without the deprecation notice it
    forces on for an alias it uses internally (it resets warning filters, so only
    ``showwarning`` reaches it)."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def quiet(message, *args, **kwargs):
            if "moved out from the experimental phase" not in str(message):
                shown(message, *args, **kwargs)
        warnings.showwarning = quiet
        if kind == "randaugment":
            return rand_augment.rand_augment(images, n=2, m=9, shape=[size, size])
        return auto_augment.auto_augment_image_net(images, shape=[size, size])


def torch_dtype(dali_dtype) -> torch.dtype:
    """The torch dtype of a DALI tensor's dtype, a ``DALIDataType`` enum (which ``np.dtype`` rejects)."""
    from nvidia.dali.plugin.pytorch import to_torch_type
    return to_torch_type[dali_dtype]


def _to_torch(batch, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (uniform shapes) -> a torch tensor on ``device``."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray
        dense = batch.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch_dtype(dense.dtype), device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(batch.as_tensor()))
