"""The DALI loader on CPU (device_id=None): same file, same crops, same interface as FFCV."""
import numpy as np
import pytest
import torch

from fastvip.errors import FastvipError
from fastvip.data.packed import open_packed
from fastvip.loaders import build_loader
from helpers.one_epoch import one_epoch_run

pytest.importorskip("nvidia.dali")
CPU = torch.device("cpu")


def _loader(kind, path, train, **kw):
    args = dict(batch_size=16, image_size=24, device=CPU, seed=7, workers=2)
    args.update(kw)
    return build_loader(kind, path, train=train, **args)


def _all(loader):
    batches = [(x.clone(), y.clone()) for x, y in loader]  # FFCV recycles its buffers
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), batches


def test_eval_every_sample_once_with_its_label(colour_data):
    packed = open_packed(colour_data["val"])
    dali = _loader("dali", colour_data["val"], False, batch_size=10)
    assert len(dali) == 5 and dali.num_samples == 48
    x, y, batches = _all(dali)
    assert x.shape == (48, 3, 24, 24) and x.dtype == torch.uint8
    assert [len(b[1]) for b in batches] == [10, 10, 10, 10, 8]  # the partial batch is kept
    assert np.array_equal(y.numpy(), packed.labels)


def test_train_batches_shape_range_and_drop_last(colour_data):
    dali = _loader("dali", colour_data["train"], True, batch_size=40)
    assert len(dali) == 2  # 96 images: the last 16 are dropped
    x, y, batches = _all(dali)
    assert [len(b[1]) for b in batches] == [40, 40]
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 24, 24) and x.float().std() > 10
    assert set(y.tolist()) <= {0, 1, 2, 3}


def test_eval_parity_with_ffcv(colour_data):
    # Same windows, same labels, same order. Pixels differ only by decoder and resize
    # filter (DALI: linear with antialiasing; FFCV: OpenCV INTER_AREA): measured about
    # 1-3 levels of 255 on real photos. A wrong crop, order or mirror gives tens.
    fx, fy, _ = _all(_loader("ffcv", colour_data["val"], False))
    dx, dy, _ = _all(_loader("dali", colour_data["val"], False))
    assert torch.equal(fy, dy)
    diff = (fx.float() - dx.float()).abs().mean().item()
    assert diff < 6.0, diff


def test_train_parity_with_ffcv_same_crops_and_flips(colour_data):
    for epoch in (0, 3):
        f, d = _loader("ffcv", colour_data["train"], True), _loader("dali", colour_data["train"], True)
        f.set_epoch(epoch)
        d.set_epoch(epoch)
        fx, fy, _ = _all(f)
        dx, dy, _ = _all(d)
        assert torch.equal(fy, dy)
        assert (fx.float() - dx.float()).abs().mean().item() < 6.0
        # the same images mirrored the other way would be far apart
        assert (fx.flip(3).float() - dx.float()).abs().mean().item() > 10.0


def test_reproducible_and_resumable_order(colour_data):
    a = _loader("dali", colour_data["train"], True)
    a.set_epoch(2)
    first = _all(a)[0]
    fresh = _loader("dali", colour_data["train"], True)  # a "resumed" loader starting at epoch 2
    fresh.set_epoch(2)
    assert torch.equal(first, _all(fresh)[0])
    a.set_epoch(3)
    assert not torch.equal(first, _all(a)[0])
    for _ in a:  # an early break, then a whole epoch
        break
    a.set_epoch(4)
    assert sum(len(y) for _, y in a) == 96


def test_source_orders_each_epoch_once(colour_data, monkeypatch):
    """The epoch's (P x K) order is computed once, not for every batch; batches are unchanged."""
    from types import SimpleNamespace

    import fastvip.loaders.dali as dali_mod
    loader = _loader("dali", colour_data["train"], True, batch_size=8, pk=4)

    def source():
        return dali_mod.BatchSource(*loader._source_args, base_epoch=0, **loader._source_kw)

    def batch(src, epoch, i):  # crop windows and labels: both follow the order
        out = src(SimpleNamespace(epoch_idx=epoch, iteration=i))
        return np.concatenate([np.stack(out[1]).ravel(), np.stack(out[4]).ravel()])
    fresh = [batch(source(), e, i) for e in (0, 1) for i in range(12)]  # 96 images, 12 batches per epoch
    calls, real = [], dali_mod.train_order
    monkeypatch.setattr(dali_mod, "train_order", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    cached = source()
    batches = [batch(cached, e, i) for e in (0, 1) for i in range(12)]
    assert calls == [0, 1]
    assert all(np.array_equal(a, b) for a, b in zip(fresh, batches))


def test_parallel_source_workers_match_in_process(colour_data):
    from fastvip.loaders.dali import DALILoader
    common = dict(train=False, batch_size=16, image_size=24, device=CPU, seed=7, workers=2)
    x1, y1, _ = _all(DALILoader(colour_data["val"], **common))
    x2, y2, _ = _all(DALILoader(colour_data["val"], source_workers=1, **common))
    assert torch.equal(y1, y2) and torch.equal(x1, x2)


@pytest.mark.parametrize("kind", ["autoaugment", "randaugment"])
def test_auto_augment_is_per_epoch_reproducible(colour_data, kind):
    aa = _loader("dali", colour_data["train"], True, auto_augment=kind)
    plain = _loader("dali", colour_data["train"], True)
    a, _, _ = _all(aa)
    b, _, _ = _all(aa)  # the same epoch again
    assert torch.equal(a, b)
    assert (a.float() - _all(plain)[0].float()).abs().mean().item() > 2.0
    # FFCV leaves AutoAugment to the trainer (batched on the device): no in-pipeline flag
    from fastvip.loaders import in_pipeline
    assert in_pipeline(aa) and not in_pipeline(_loader("ffcv", colour_data["train"], True))


def test_raw_pixel_storage_is_a_clear_error(tmp_path):
    from ffcv.fields import BytesField, IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from fastvip import atomic
    from fastvip.data.packed import FORMAT, fingerprint, meta_path
    path = tmp_path / "raw.beton"
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), 0, np.frombuffer(b"a.png", np.uint8))]
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField(),
                              "id": BytesField()}, num_workers=1).from_indexed_dataset(data)
    atomic.write_json(meta_path(path), {"format": FORMAT, "entries": [
        {"format": FORMAT, "num_samples": 1, "labelled": True, "classes": ["c"], "fingerprint": fingerprint(path)}]})
    with pytest.raises(FastvipError, match="raw pixels for 1 images; the DALI loader reads JPEG"):
        _loader("dali", path, False)


def test_one_epoch_run_with_dali(colour_data, tmp_path):
    lines = one_epoch_run(colour_data, tmp_path / "r", "dali")
    assert lines[0]["loader"] == "dali" and lines[1]["epoch"] == 1 and lines[1]["val_top1"] > 25.0


def test_output_size_follows_set_epoch(colour_data):
    # progressive resizing: the pipeline is rebuilt at the new size; same windows as FFCV at that size
    d = _loader("dali", colour_data["train"], True)
    d.set_epoch(1, image_size=16)
    dx, dy, _ = _all(d)
    ref = _loader("dali", colour_data["train"], True, image_size=16)
    ref.set_epoch(1)
    rx, ry, _ = _all(ref)
    assert dx.shape[1:] == (3, 16, 16) and torch.equal(dx, rx) and torch.equal(dy, ry)
    f = _loader("ffcv", colour_data["train"], True, image_size=16)
    f.set_epoch(1)
    fx, fy, _ = _all(f)
    assert torch.equal(fy, dy) and (fx.float() - dx.float()).abs().mean().item() < 6.0
    d.set_epoch(2, image_size=24)
    assert next(iter(d))[0].shape[-1] == 24
    with pytest.raises(FastvipError, match="outside"):
        d.set_epoch(3, image_size=32)


def test_gpu_batch_dtype_comes_from_dalis_own_mapping():
    """A DALI tensor's ``dtype`` is a ``DALIDataType`` enum, which ``np.dtype`` rejects (the first GPU
    batch raised TypeError); the loader maps it with DALI's own table."""
    from nvidia.dali.tensors import TensorCPU
    from fastvip.loaders.dali import torch_dtype
    for array, want in ((np.zeros((2, 3), np.uint8), torch.uint8), (np.zeros(4, np.int64), torch.int64)):
        dali_dtype = TensorCPU(array).dtype  # the same enum a GPU TensorList's dense tensor reports
        with pytest.raises(TypeError):
            np.dtype(dali_dtype)
        assert torch_dtype(dali_dtype) is want
