"""Data loaders behind one small interface.

A loader reads a file written by ``fastvip pack`` and is an iterable of
``(images, labels)`` batches already on the training device:

- ``images``: ``uint8`` NCHW (channels-last in memory), cropped and flipped;
  pixel work (AutoAugment, normalisation, mixing) is done afterwards by the
  batched functions in :mod:`fastvip.methods.augment`;
- ``labels``: ``int64`` (``-1`` for unlabelled samples).

With ``views=2`` a train batch holds every image twice, independently cropped and
flipped: rows ``i`` and ``i + n`` are the two views of one image.

A batch may live in a buffer the loader reuses (FFCV recycles its output slots
after ``batches_ahead`` more batches, as a bare FFCV ``Loader`` does): consume it
in the step, or ``clone()`` what you keep longer.

Every loader has ``__iter__``, ``__len__`` (batches per epoch) and
``set_epoch(epoch, image_size=None, start_batch=0)``; randomness is keyed on (seed, epoch, sample index)
(:mod:`fastvip.loaders.keyed`), so an epoch's batches do not depend on history.

The output size is per epoch: ``set_epoch(epoch, image_size=s)`` makes the batches of the
epochs that follow ``s x s`` (progressive resizing), until another size is set; ``None``
keeps the current one. ``s`` may be any size up to the ``image_size`` the loader was built
with (which is where it starts): the FFCV loader decodes into the same buffers with the
same compiled pipeline, the DALI loader rebuilds its pipeline when the size changes, the
resident loader resizes its stored pixels to whatever size the batch asks for.
Crop windows do not depend on it: a size only changes the resolution a window is resized to.

``start_batch`` (train loaders) makes the next pass over the epoch begin at that batch, as
if the batches before it had been consumed: a run resumed from a mid-epoch checkpoint
skips what it has already trained on without decoding it. Later passes start at 0.
Train loaders shuffle and drop the last partial batch; eval loaders visit
every sample exactly once, in file order.
"""
from __future__ import annotations

import importlib
from typing import Iterator, Protocol

import torch

# name -> "module:class"; imported on use so a missing optional backend (DALI)
# only matters to the recipes that ask for it.
LOADERS = {
    "ffcv": "fastvip.loaders.ffcv:FFCVLoader",
    "dali": "fastvip.loaders.dali:DALILoader",
    "resident": "fastvip.loaders.resident:ResidentLoader",
}


class Loader(Protocol):
    num_samples: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, image_size: int | None = None, start_batch: int = 0) -> None: ...


def build_loader(kind: str, path, *, train: bool, batch_size: int, image_size: int,
                 device: torch.device, seed: int = 0, workers: int = 0,
                 eval_crop: float = 0.875, crop_scale: tuple[float, float] = (0.08, 1.0),
                 auto_augment: str = "none", views: int = 1, pk: int = 0, resident_size: int = 0,
                 resident_storage: str = "pixels", skip_damaged: bool = False, console=None) -> Loader:
    """Create the loader named ``kind`` (a key of :data:`LOADERS`).

    ``image_size`` is the largest output size (see :meth:`Loader.set_epoch`). ``batch_size`` is global: under torchrun each process loads ``batch_size / world`` images
    (train). ``views``: two-view batches (every image ``views`` times, independently cropped
    and flipped, views one after the other). ``pk``: P x K class-balanced batches with K = ``pk``.
    ``auto_augment`` reaches loaders that augment inside their pipeline
    (``augments_in_pipeline``); for the others the trainer augments on the device.
    ``resident_size`` (the longest stored side, 0 = as packed), ``resident_storage`` (``pixels``:
    decoded once; ``jpeg``: the packed bytes, each batch decoded on the device) and ``console``
    (its progress bar and notes) reach the resident loader only. Every loader checks each
    sample against the packed file's checksums before decoding it: a damaged one stops the
    run with a one-line error, or with ``skip_damaged`` is left out of its batch and reported
    (the loader's ``damaged_skipped`` counts them).
    """
    from fastvip.errors import FastvipError
    if kind not in LOADERS:
        raise FastvipError(f"unknown loader {kind!r}; choose one of {', '.join(LOADERS)}")
    module, cls = LOADERS[kind].split(":")
    try:
        loader_cls = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise FastvipError(f"loader {kind!r} is not available: {e}") from None
    extra = {"auto_augment": auto_augment if train else "none"} if in_pipeline(loader_cls) else {}
    if kind == "resident":
        extra.update(resident_size=resident_size, storage=resident_storage, console=console)
    return loader_cls(path, train=train, batch_size=batch_size, image_size=image_size,
                      device=device, seed=seed, workers=workers, eval_crop=eval_crop,
                      crop_scale=crop_scale, views=views if train else 1, pk=pk if train else 0,
                      skip_damaged=skip_damaged, **extra)


def in_pipeline(loader) -> bool:
    """Whether ``loader`` (instance or class) applies AutoAugment itself."""
    return bool(getattr(loader, "augments_in_pipeline", False))
