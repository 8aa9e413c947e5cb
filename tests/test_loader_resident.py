"""The resident loader: decode once, then the FFCV loader's windows cut from memory."""
import numpy as np
import pytest
import torch

from fastvip.errors import FastvipError
from fastvip.loaders import build_loader
from fastvip.data.packed import open_packed
from helpers.one_epoch import one_epoch_run

CPU = torch.device("cpu")


def _loader(kind, path, train, **kw):
    args = dict(batch_size=16, image_size=24, device=CPU, seed=7, workers=2)
    args.update(kw)
    return build_loader(kind, path, train=train, **args)


def _resident(path, train, **kw):
    from fastvip.loaders.resident import ResidentLoader
    return ResidentLoader(path, train=train, **dict(dict(batch_size=16, image_size=24, device=CPU, seed=7, workers=2), **kw))


def _all(loader):
    batches = [(x.clone(), y.clone()) for x, y in loader]  # FFCV recycles its buffers
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), batches


@pytest.fixture(scope="module")
def resident_train(colour_data):
    return _loader("resident", colour_data["train"], True)


@pytest.fixture(scope="module")
def ffcv_train(colour_data):
    return _loader("ffcv", colour_data["train"], True)  # each FFCV loader compiles its pipeline: share one


def test_decode_once_equals_ffcv_whole_decode(colour_data, resident_train):
    from ffcv.libffcv import imdecode
    from fastvip.data.packed import image_records
    rec = image_records(colour_data["train"])
    data = np.fromfile(colour_data["train"], np.uint8)
    r = resident_train
    packed = open_packed(colour_data["train"])
    assert r.store["where"] == "host" and r.store["images"] == 96
    assert r.store["bytes"] == int(packed.heights.sum()) * int(packed.widths.max()) * 3
    for i in range(96):
        h, w = int(rec.heights[i]), int(rec.widths[i])
        whole = np.empty((h, w, 3), np.uint8)  # FFCV's own JPEG decode of the stored bytes
        imdecode(data[rec.ptrs[i]:rec.ptrs[i] + rec.sizes[i]], whole, h, w, h, w, 0, 0, 1, 1, False, False)
        assert np.array_equal(r.store_tensor[r.row[i]:r.row[i] + h, :w].numpy(), whole), i


def test_train_windows_and_flips_match_ffcv(ffcv_train, resident_train):
    # same keyed windows and flips; pixels differ only where FFCV decodes at a reduced DCT
    # scale (a crop much larger than the output): measured 0.09 levels of 255 on average
    for epoch in (0, 3):
        ffcv_train.set_epoch(epoch)
        resident_train.set_epoch(epoch)
        fx, fy, _ = _all(ffcv_train)
        rx, ry, batches = _all(resident_train)
        assert torch.equal(fy, ry) and [len(b[1]) for b in batches] == [16] * 6
        assert rx.shape == (96, 3, 24, 24) and rx.dtype == torch.uint8
        assert rx.is_contiguous(memory_format=torch.channels_last)
        assert (fx.float() - rx.float()).abs().mean().item() < 0.5
        assert (fx.flip(3).float() - rx.float()).abs().mean().item() > 10.0


def test_eval_every_sample_once_and_close_to_ffcv(colour_data):
    packed = open_packed(colour_data["val"])
    r = _loader("resident", colour_data["val"], False, batch_size=10)
    assert len(r) == 5 and r.num_samples == 48
    rx, ry, batches = _all(r)
    assert [len(b[1]) for b in batches] == [10, 10, 10, 10, 8]
    assert np.array_equal(ry.numpy(), packed.labels)
    fx, fy, _ = _all(_loader("ffcv", colour_data["val"], False, batch_size=10))
    assert torch.equal(fy, ry)
    assert (fx.float() - rx.float()).abs().mean().item() < 1.0  # measured 0.44 (FFCV's scaled IDCT)


def test_batched_device_resize_matches_cpu_kernels(colour_data, resident_train):
    # the CUDA path (batched matrix products), run here on the CPU, against the compiled kernels
    m = _resident(colour_data["train"], True, backend="matmul", views=2)
    k = _loader("resident", colour_data["train"], True, views=2)
    for size in (24, 16):
        m.set_epoch(2, image_size=size)
        k.set_epoch(2, image_size=size)
        mx, my, _ = _all(m)
        kx, ky, _ = _all(k)
        assert torch.equal(my, ky) and mx.shape == kx.shape == (192, 3, size, size)
        d = (mx.float() - kx.float()).abs()
        assert d.max().item() <= 2 and d.mean().item() < 0.2, (d.max(), d.mean())


def test_resume_sizes_views_and_pk(colour_data, resident_train):
    r = resident_train
    r.set_epoch(5)
    full, _, batches = _all(r)
    r.set_epoch(5, start_batch=4)  # a run resumed after 4 batches of epoch 5
    tail, _, rest = _all(r)
    assert len(rest) == 2 and torch.equal(tail, full[64:])
    fresh = _loader("resident", colour_data["train"], True)
    fresh.set_epoch(5)
    assert torch.equal(_all(fresh)[0], full)
    r.set_epoch(6, image_size=16)
    assert next(iter(r))[0].shape == (16, 3, 16, 16)
    with pytest.raises(FastvipError, match="outside"):
        r.set_epoch(7, image_size=32)
    r.set_epoch(0, image_size=24)
    two = _loader("resident", colour_data["train"], True, views=2)
    x, y = next(iter(two))
    assert x.shape[0] == 32 and torch.equal(y[:16], y[16:]) and not torch.equal(x[:16], x[16:])
    pk = _loader("resident", colour_data["train"], True, pk=4, batch_size=8)
    for _, y in pk:
        assert sorted(torch.bincount(y, minlength=4).tolist()) == [0, 0, 4, 4]


def test_smaller_store_and_the_does_not_fit_error(colour_data, ffcv_train, monkeypatch):
    small = _loader("resident", colour_data["train"], True, resident_size=32)
    packed = open_packed(colour_data["train"])
    assert small.store["resident_size"] == 32 and int(small.stored_h.max()) <= 32
    assert small.store["bytes"] < 0.5 * int(packed.heights.sum()) * int(packed.widths.max()) * 3
    ffcv_train.set_epoch(0)
    sx, sy, _ = _all(small)
    fx, fy, _ = _all(ffcv_train)
    assert torch.equal(fy, sy)
    # the same windows and flips from fewer pixels: measured 7.4 levels off, against 25 mirrored
    # and 76 for another epoch's windows
    assert (fx.float() - sx.float()).abs().mean().item() < 12.0
    assert (fx.flip(3).float() - sx.float()).abs().mean().item() > 18.0
    import fastvip.loaders.resident as res
    need = int(packed.heights.sum()) * int(packed.widths.max()) * 3
    monkeypatch.setattr(res, "_free_bytes", lambda device: (need // 2, need, "1 GB kept free"))
    with pytest.raises(FastvipError) as e:
        _loader("resident", colour_data["train"], True)
    msg = str(e.value)
    assert "\n" not in msg and "need" in msg and "resident_size" in msg and "would fit" in msg
    fit = int(msg.split("resident_size ")[-1].split()[0])
    assert res.store_bytes(packed.heights, packed.widths, fit) <= need // 2


def test_one_epoch_run_with_resident(colour_data, tmp_path):
    lines = one_epoch_run(colour_data, tmp_path / "r", "resident")
    start, epoch = lines[0], lines[1]
    assert start["loader"] == "resident" and start["store"]["train"]["where"] == "host"
    assert start["store"]["train"]["images"] == 96 and start["store"]["val"]["images"] == 48
    assert epoch["epoch"] == 1 and epoch["val_n"] == 48 and epoch["val_top1"] > 25.0


@pytest.mark.parametrize("kind", ["resident", "ffcv"])
def test_build_loader_keeps_torch_threads(colour_data, monkeypatch, kind):
    """FFCV's import sets torch to one intra-op thread and its Loader to its worker count:
    both loaders put back the process's share, or CPU training runs on one core."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _loader(kind, colour_data["train"], False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
