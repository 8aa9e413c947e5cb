"""Resident JPEG storage (``resident_storage=jpeg``): the packed JPEG bytes kept in memory, each
batch decoded on the training device.

Decoded pixels fit in memory only for small data (VIPriors at the packed 512 px is about 58 GB
of pixels); its packed JPEG bytes are about a tenth of that. With ``storage="jpeg"`` the
:class:`~fastvip.loaders.resident.ResidentLoader` keeps the bytes of every image it needs,
concatenated in one uint8 tensor with per-sample offsets, and an epoch reads nothing from disk:

- **where**: host memory, always (plain pageable memory: the decoder copies what it needs).
  torchvision's nvJPEG decode takes its bitstreams from host memory only (``decode_jpeg``
  refuses CUDA input: nvJPEG parses headers and Huffman-decodes the non-baseline streams on the
  host), so bytes kept on the GPU would have to come back to the host every batch, a copy
  that waits on the training stream. The fit check, the ``/dev/shm`` store shared by the local
  processes under torchrun and the eval shards are the pixel store's.
- **per batch**: the batch's byte ranges are decoded in one batched call,
  ``torchvision.io.decode_jpeg(list, device=<training device>)`` (nvJPEG on CUDA, libjpeg-turbo
  on a CPU), laid out as a small pixel store (one image per row band), and cut with the pixel
  store's own code: the same keyed windows, flips and resize (compiled kernels on a CPU,
  batched matrix products on CUDA). The crops equal the pixel store's up to the two JPEG
  decoders' rounding (FFCV's libjpeg-turbo settings against torchvision's; the bound is
  measured in ``tests/test_resident_jpeg.py``).
- **fallback**: an image the device decoder rejects (nvJPEG: CMYK, some progressive or
  unusually sampled streams) is decoded by torchvision's CPU decoder and moved to the device;
  it is remembered, counted (``loader.cpu_decoded``) and the first one is logged once. An
  image no decoder reads is an error naming the sample.
- packed samples stored as raw pixels (files written by FFCV's own tools) are kept as they
  are and need no decode.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import torch

from fastvip.console import printable
from fastvip.errors import FastvipError

from .resident import crop_resize, in_threads, resize_batch

_SOI = (0xFF, 0xD8)  # every JPEG stream starts with this marker


def readable(text: str) -> str:
    """A sample id as one line of text: undecodable bytes as U+FFFD, control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in printable(str(text)))


class JpegStore:
    """The packed JPEG bytes of the images a :class:`ResidentLoader` needs, and its batches."""

    def __init__(self, loader, rec, keep: np.ndarray, path, console=None):
        self.loader, self.path, self.console = loader, path, console
        n = loader.packed.num_samples
        self.modes, self.heights, self.widths = rec.modes, rec.heights, rec.widths
        self.ptrs, self.sizes = rec.ptrs, rec.sizes
        self.keep = keep
        self.offset = np.full(n, -1, np.int64)  # where sample i's bytes start in the store
        self.offset[keep] = np.concatenate([[0], np.cumsum(rec.sizes[keep])[:-1]]) if len(keep) else []
        self.nbytes = int(rec.sizes[keep].sum())
        # windows are cut from the packed pixels: the "stored" size is the packed size
        loader.stored_h, loader.stored_w = loader.heights.copy(), loader.widths.copy()
        self.host_only: dict[int, str] = {}  # samples the device decoder rejected, and why
        self.cpu_decoded = 0  # decodes those took on the CPU (every time one is in a batch)
        self._logged = False
        self.device_decode = self._torchvision_decode  # replaceable (tests fake a rejecting decoder)
        self.decoder = "nvjpeg (torchvision)" if loader.device.type == "cuda" else "libjpeg-turbo (torchvision, CPU)"
        if loader.device.type == "cuda":
            self._check_device_decoder()

    def _check_device_decoder(self) -> None:
        """One tiny JPEG through the device decoder now: a torchvision built without nvJPEG (or a
        device it cannot use) is a one-line error here, not every image decoded on the CPU."""
        from torchvision.io import encode_jpeg
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            probe = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        try:
            self._torchvision_decode([probe], self.loader.device)
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or ["failed"])[-1]
            raise FastvipError(f"resident_storage jpeg: torchvision's GPU JPEG decoder does not run on "
                               f"{self.loader.device} ({readable(reason)}); use resident_storage pixels or "
                               "loader ffcv") from None

    # -- loading

    def plan(self) -> dict:
        """The store's bytes, shape and filling, for :meth:`ResidentLoader._load`."""
        return {"bytes": self.nbytes, "shape": (max(self.nbytes, 1),), "device": False, "key": "jpeg",
                "what": "as packed JPEG bytes", "info": {"decoder": self.decoder}, "fill": self._fill}

    def _fill(self, store: torch.Tensor) -> None:
        """Copy each kept image's bytes out of the packed file; a stream that is not a JPEG is an
        error naming the sample (here, not in some later epoch)."""
        from fastvip.console import Console
        console = self.console or Console(quiet=True)
        data = np.memmap(os.fspath(self.path), dtype=np.uint8, mode="r").view(np.ndarray)
        dst = store.numpy()
        kind = "train" if self.loader.train else "eval"
        with console.progress(f"resident {kind} JPEG bytes", len(self.keep)) as bar:
            for start in range(0, len(self.keep), 4096):
                for j in self.keep[start:start + 4096]:
                    p, s, o = int(self.ptrs[j]), int(self.sizes[j]), int(self.offset[j])
                    dst[o:o + s] = data[p:p + s]
                    if self.modes[j] == 0 and (s < 4 or tuple(dst[o:o + 2]) != _SOI):
                        raise self.damaged(int(j), "not a JPEG stream")
                bar.advance(min(4096, len(self.keep) - start))

    def image_bytes(self, j: int) -> torch.Tensor:
        """Sample ``j``'s stored bytes (a view of the store)."""
        o = int(self.offset[j])
        return self.loader.store_tensor[o:o + int(self.sizes[j])]

    # -- decoding

    def _torchvision_decode(self, streams: list[torch.Tensor], device) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg
        with warnings.catch_warnings():  # torchvision 0.29 deprecates it for TorchCodec: docs/loaders.md says so
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            return decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)

    def _host_decode(self, j: int) -> torch.Tensor:
        """Sample ``j`` decoded on the CPU (torchvision's libjpeg-turbo), or raw pixels reshaped."""
        h, w = int(self.heights[j]), int(self.widths[j])
        if self.modes[j] != 0:
            return self.image_bytes(j)[:h * w * 3].view(h, w, 3).permute(2, 0, 1)
        try:
            return self._torchvision_decode([self.image_bytes(j)], "cpu")[0]
        except RuntimeError as e:
            raise self.damaged(j, (str(e).strip().splitlines() or ["decode failed"])[-1]) from None

    def decode(self, js: np.ndarray) -> list[torch.Tensor]:
        """Samples ``js`` decoded, ``(3, h, w)`` uint8 on the training device: one batched call on
        the device for the JPEG streams; the rest (raw pixels, rejected streams) on the host."""
        device = self.loader.device
        out: list[torch.Tensor | None] = [None] * len(js)
        on_device = [k for k, j in enumerate(js) if self.modes[j] == 0 and int(j) not in self.host_only]
        if on_device:
            streams = [self.image_bytes(int(js[k])) for k in on_device]
            try:
                decoded = self.device_decode(streams, device)
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError:  # no partial results: find the images it rejects, one at a time
                decoded = [self._one(int(js[k]), s) for k, s in zip(on_device, streams)]
            for k, image in zip(on_device, decoded):
                out[k] = image
        for k, j in enumerate(js):
            if out[k] is None:
                out[k] = self._host_decode(int(j)).to(device, non_blocking=device.type == "cuda")
                if self.modes[j] == 0:  # a rejected stream the CPU decoder reads: said once, counted
                    self.cpu_decoded += 1
                    self._log_fallback(int(j))
        for k, j in enumerate(js):
            if tuple(out[k].shape) != (3, int(self.heights[j]), int(self.widths[j])):
                raise self.damaged(int(j), f"decodes to {tuple(out[k].shape[1:])} pixels, the file says "
                                           f"{(int(self.heights[j]), int(self.widths[j]))}")
        return out

    def _one(self, j: int, stream: torch.Tensor) -> torch.Tensor | None:
        """One stream on the device decoder; None (remembered: later batches take it to the CPU
        decoder directly) when it rejects it."""
        try:
            return self.device_decode([stream], self.loader.device)[0]
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:
            self.host_only[j] = (str(e).strip().splitlines() or ["rejected"])[-1]
            return None

    def _log_fallback(self, j: int) -> None:
        if self._logged:
            return
        self._logged = True
        message = (f"resident loader: the {self.decoder} decoder rejects image {j} "
                   f"({readable(self.loader.packed.ids[j])}) of {self.path} ({readable(self.host_only[j])}); "
                   "it and any other image it rejects are decoded on the CPU (counted: loader.cpu_decoded)")
        if self.console is not None:
            self.console.log(message)
        else:
            print(printable(f"warning: {message}"), file=sys.stderr, flush=True)

    def damaged(self, j: int, reason: str) -> FastvipError:
        return FastvipError(f"resident loader: image {j} ({readable(self.loader.packed.ids[j])}) of {self.path} "
                            f"is damaged ({readable(reason)}); re-pack the file")

    # -- batches

    def batch(self, idx: np.ndarray, epoch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of samples ``idx``: decoded once each, then cut as the pixel store cuts its
        stored images (the same windows, flips and resize)."""
        loader, dev = self.loader, self.loader.device
        idx_v, win, mirror = loader.windows(idx, epoch)
        labels = loader.labels[torch.from_numpy(idx_v)]
        uniq, inverse = np.unique(idx, return_inverse=True)
        images = self.decode(uniq)
        h, w = self.heights[uniq], self.widths[uniq]
        row0 = np.concatenate([[0], np.cumsum(h)[:-1]])
        rows = row0[np.tile(inverse.reshape(-1), loader.views)]
        cuda = dev.type == "cuda"
        if loader.backend == "kernel":
            mini = np.empty((int(h.sum()), int(w.max()), 3), np.uint8)
            # numpy, not torch: torch's copy would wake its OpenMP threads, which then spin beside
            # the single-threaded decode of the next batch (measured 4x slower on 2 cores)
            for r, hh, ww, image in zip(row0, h, w, images):
                mini[r:r + hh, :ww] = image.numpy().transpose(1, 2, 0)
            out = np.empty((len(idx_v), size, size, 3), np.uint8)
            in_threads(lambda lo, hi: crop_resize(mini, rows[lo:hi], win[lo:hi], mirror[lo:hi], out[lo:hi]),
                        len(idx_v), loader.workers)
            return torch.from_numpy(out).permute(0, 3, 1, 2).to(dev), labels.to(dev)
        mini = torch.empty((int(h.sum()), int(w.max()), 3), dtype=torch.uint8, device=dev)
        self._lay_out(mini, images, row0, h, w)

        def put(a):  # host -> device without a host wait
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(dev, non_blocking=True) if cuda else t.to(dev)

        images = resize_batch(mini, put(rows), put(win), put(mirror), size, int(win[:, 2].max()))
        return images, labels.pin_memory().to(dev, non_blocking=True) if cuda else labels.to(dev)

    @staticmethod
    def _lay_out(mini: torch.Tensor, images, row0, h, w) -> None:
        """Decoded ``(3, h, w)`` images into the rows of a ``(rows, width, 3)`` batch store."""
        for r, hh, ww, image in zip(row0, h, w, images):
            mini[int(r):int(r) + int(hh), :int(ww)].copy_(image.permute(1, 2, 0))
