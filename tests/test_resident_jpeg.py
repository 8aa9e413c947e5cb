"""Resident JPEG storage: the packed bytes kept in memory, every batch decoded (torchvision's
decode_jpeg; on this CPU its libjpeg-turbo decoder) and cut as the pixel store cuts."""
import io
import json

import numpy as np
import pytest
import torch

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.loaders import build_loader

CPU = torch.device("cpu")
# The two storages differ by the JPEG decoders' rounding (FFCV's libjpeg-turbo settings, which
# fill the pixel store, against torchvision's): measured on these sets, train (two views, six
# epochs, 24 and 16 px) mean 0.94-0.97, max 6 levels of 255; eval mean 0.96, max 5 (and on
# the 1,000-image ImageNet sample at 224 px: mean 0.96, max 9, 99.9th percentile 4). The same
# crops mirrored are 23-28 levels apart on average.
MEAN_BOUND, MAX_BOUND = 1.25, 8


def _loader(path, train, storage="jpeg", **kw):
    args = dict(batch_size=16, image_size=24, device=CPU, seed=7, workers=2, resident_storage=storage)
    args.update(kw)
    return build_loader("resident", path, train=train, **args)


def _all(loader):
    batches = [(x.clone(), y.clone()) for x, y in loader]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), batches


@pytest.fixture(scope="module")
def jpeg_train(colour_data):
    return _loader(colour_data["train"], True, views=2)


@pytest.fixture(scope="module")
def pixel_train(colour_data):
    return _loader(colour_data["train"], True, storage="pixels", views=2)


def test_bytes_round_trip_to_the_packed_file(colour_data, jpeg_train):
    from fastvip.data.packed import image_records
    rec = image_records(colour_data["train"])
    data = np.fromfile(colour_data["train"], np.uint8)
    r = jpeg_train
    assert r.store["storage"] == "jpeg" and r.store["where"] == "host" and r.store["images"] == 96
    assert r.store["bytes"] == int(rec.sizes.sum()) == r.store_tensor.numel()
    for i in range(96):
        packed = data[rec.ptrs[i]:rec.ptrs[i] + rec.sizes[i]]
        assert np.array_equal(r.jpeg.image_bytes(i).numpy(), packed), i


def _diff(a, b):
    d = (a.float() - b.float()).abs()
    return d.mean().item(), d.max().item()


def test_crops_equal_the_pixel_store_within_the_bound(colour_data, jpeg_train, pixel_train):
    for epoch, size in ((0, 24), (3, 16)):  # a later epoch at a progressive-resizing size
        jpeg_train.set_epoch(epoch, image_size=size)
        pixel_train.set_epoch(epoch, image_size=size)
        jx, jy, batches = _all(jpeg_train)
        px, py, _ = _all(pixel_train)
        assert torch.equal(jy, py) and [len(b[1]) for b in batches] == [32] * 6
        assert jx.shape == px.shape == (192, 3, size, size) and jx.dtype == torch.uint8
        assert jx.is_contiguous(memory_format=torch.channels_last)
        mean, top = _diff(jx, px)
        assert mean < MEAN_BOUND and top <= MAX_BOUND, (epoch, mean, top)
        assert _diff(jx.flip(3), px)[0] > 10.0  # the same flips, not just similar colours
    jpeg_train.set_epoch(0, image_size=24)
    pixel_train.set_epoch(0, image_size=24)
    ev_j = _loader(colour_data["val"], False, batch_size=10)
    ev_p = _loader(colour_data["val"], False, storage="pixels", batch_size=10)
    jx, jy, batches = _all(ev_j)
    px, py, _ = _all(ev_p)
    assert [len(b[1]) for b in batches] == [10, 10, 10, 10, 8] and torch.equal(jy, py)
    mean, top = _diff(jx, px)
    assert mean < MEAN_BOUND and top <= MAX_BOUND, (mean, top)


def test_the_cuda_path_run_on_the_cpu(colour_data, jpeg_train, pixel_train):
    """The CUDA path (batch store as a tensor, batched matrix-product resize), run here on the CPU."""
    from fastvip.loaders.resident import ResidentLoader
    m = ResidentLoader(colour_data["train"], train=True, batch_size=16, image_size=24, device=CPU, seed=7,
                       workers=2, views=2, backend="matmul", storage="jpeg")
    m.set_epoch(2)
    jpeg_train.set_epoch(2)
    pixel_train.set_epoch(2)
    mx, my, _ = _all(m)
    kx, ky, _ = _all(jpeg_train)
    assert torch.equal(my, ky) and mx.shape == kx.shape == (192, 3, 24, 24)
    mean, top = _diff(mx, kx)  # the same decode, the two resize implementations
    assert top <= 2 and mean < 0.2, (mean, top)
    mean, top = _diff(mx, _all(pixel_train)[0])
    assert mean < MEAN_BOUND and top <= MAX_BOUND, (mean, top)
    jpeg_train.set_epoch(0)
    pixel_train.set_epoch(0)


def test_resume_is_exact(colour_data, jpeg_train):
    jpeg_train.set_epoch(5)
    full, _, _ = _all(jpeg_train)
    jpeg_train.set_epoch(5, start_batch=4)
    tail, _, rest = _all(jpeg_train)
    assert len(rest) == 2 and torch.equal(tail, full[4 * 32:])
    fresh = _loader(colour_data["train"], True, views=2)
    fresh.set_epoch(5)
    assert torch.equal(_all(fresh)[0], full)


def test_rejected_images_fall_back_to_the_cpu_decoder(colour_data, jpeg_train):
    """A device decoder that rejects two images (as nvJPEG rejects CMYK or odd sampling): the
    batch call fails whole, those two are found, decoded on the CPU, counted and logged once."""
    out = io.StringIO()
    r = _loader(colour_data["train"], True, views=2, console=Console(stream=out))
    store = r.jpeg
    real = store.device_decode
    rejected = {int(i) for i in r._order(1)[[3, 20]]}  # one in batch 0, one in batch 1
    bad = {store.image_bytes(i).data_ptr() for i in rejected}
    calls = []

    def picky(streams, device):
        calls.append(len(streams))
        if any(s.data_ptr() in bad for s in streams):
            raise RuntimeError("Error while decoding JPEG images: Unknown chroma subsampling")
        return real(streams, device)

    store.device_decode = picky
    r.set_epoch(1)
    x, y, _ = _all(r)
    jpeg_train.set_epoch(1)
    ref, ref_y, _ = _all(jpeg_train)
    assert torch.equal(x, ref) and torch.equal(y, ref_y)  # the CPU decoder is torchvision's too, here
    assert set(store.host_only) == rejected and r.cpu_decoded == 2
    notes = [line for line in out.getvalue().splitlines() if "rejects" in line]
    assert len(notes) == 1 and "Unknown chroma subsampling" in notes[0] and "decoded on the CPU" in notes[0]
    calls.clear()
    r.set_epoch(1)
    _all(r)  # known rejects go straight to the CPU: every batched call succeeds, no new note
    assert calls == [15, 15, 16, 16, 16, 16] and r.cpu_decoded == 4
    assert len([line for line in out.getvalue().splitlines() if "rejects" in line]) == 1


def test_a_damaged_image_is_a_one_line_error_naming_it(colour_data, tmp_path):
    from fastvip.data.packed import open_packed
    r = _loader(colour_data["val"], False, batch_size=48)
    packed = open_packed(colour_data["val"])
    j = 5
    stream = r.jpeg.image_bytes(j)
    stream[2:len(stream) // 2] = 0xFF  # headers and tables destroyed: no decoder reads it
    with pytest.raises(FastvipError) as e:
        next(iter(r))
    msg = str(e.value)
    assert "\n" not in msg and f"image {j} ({packed.ids[j]})" in msg and "damaged" in msg and "re-pack" in msg
    from fastvip.loaders.resident_jpeg import readable
    assert readable("a\nb\udcff.JPEG") == "a\\nb\ufffd.JPEG"  # an id with odd bytes stays one line


def test_not_a_jpeg_stream_is_refused_when_loading(colour_data, tmp_path):
    import shutil
    from fastvip.data.packed import fingerprint, image_records, meta_path
    src, bad = colour_data["val"], tmp_path / "bad.beton"
    shutil.copy(src, bad)
    rec = image_records(src)
    with open(bad, "r+b") as f:  # image 7's first bytes lost, as a damaged disk would lose them
        f.seek(int(rec.ptrs[7]))
        f.write(b"\0\0")
    side = json.loads(meta_path(src).read_text())
    side["entries"][0]["fingerprint"] = fingerprint(bad)  # a sidecar that vouches for the damaged copy,
    del side["entries"][0]["checksums"]  # packed before checksums (they would name it first)
    meta_path(bad).write_text(json.dumps(side))
    with pytest.raises(FastvipError, match=r"image 7 \(.*\) of .*bad.beton is damaged \(not a JPEG stream\)"):
        _loader(bad, False)


def test_does_not_fit_names_the_bytes_and_a_storage_that_would(colour_data, monkeypatch):
    import fastvip.loaders.resident as res
    from fastvip.data.packed import image_records
    rec = image_records(colour_data["train"])
    jpeg = int(rec.sizes.sum())
    pixels = int(rec.heights.sum()) * int(rec.widths.max()) * 3
    assert jpeg < pixels // 2
    monkeypatch.setattr(res, "_free_bytes", lambda device: (jpeg // 2, jpeg, "1 GB kept free"))
    with pytest.raises(FastvipError) as e:
        _loader(colour_data["train"], True)
    msg = str(e.value)
    assert "\n" not in msg and "as packed JPEG bytes need" in msg and "resident_storage pixels at resident_size" in msg
    monkeypatch.setattr(res, "_free_bytes", lambda device: (jpeg * 2, jpeg * 3, "1 GB kept free"))
    with pytest.raises(FastvipError, match=r"resident_storage jpeg would fit \("):
        _loader(colour_data["train"], True, storage="pixels")
    with pytest.raises(FastvipError, match="set resident_size 0"):
        _loader(colour_data["train"], True, resident_size=32)


def test_recipe_field(tmp_path):
    from fastvip.recipe import Recipe, parse_overrides
    assert parse_overrides(["resident_storage=jpeg"]) == {"resident_storage": "jpeg"}
    Recipe(loader="resident", resident_storage="jpeg").validate()
    with pytest.raises(FastvipError, match="resident_storage must be one of pixels, jpeg"):
        Recipe(resident_storage="png").validate()
    with pytest.raises(FastvipError, match="with resident_storage jpeg it must be 0"):
        Recipe(loader="resident", resident_storage="jpeg", resident_size=64).validate()


def test_one_epoch_run_with_jpeg_storage(colour_data, tmp_path):
    from fastvip.recipe import Recipe
    from fastvip.train import run
    r = Recipe(model="test_resnet", loader="resident", resident_storage="jpeg", train_data=str(colour_data["train"]),
               val_data=str(colour_data["val"]), image_size=24, epochs=1, batch_size=16, lr=0.4,
               warmup_epochs=0.5, crop_scale_min=0.3, workers=2).validate()
    run(r, tmp_path / "r", console=Console(quiet=True))
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    start, epoch = lines[0], lines[1]
    assert start["loader"] == "resident"
    for split, n in (("train", 96), ("val", 48)):
        st = start["store"][split]
        assert st["storage"] == "jpeg" and st["where"] == "host" and st["images"] == n and st["bytes"] > 0
    assert epoch["epoch"] == 1 and epoch["val_n"] == 48 and epoch["val_top1"] > 25.0
