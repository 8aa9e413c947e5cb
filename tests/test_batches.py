"""Batch composition shared by both loaders: two-view batches and P x K class-balanced batches."""
import numpy as np
import pytest
import torch

from fastvip.errors import FastvipError
from fastvip.loaders import build_loader
from fastvip.loaders.keyed import pk_order, rank_slice, train_order

CPU = torch.device("cpu")


def _batches(kind, path, **kw):
    args = dict(train=True, batch_size=16, image_size=24, device=CPU, seed=7, workers=2)
    args.update(kw)
    loader = build_loader(kind, path, **args)
    loader.set_epoch(1)
    return loader, [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("kind", ["ffcv", "dali"])
def test_two_view_batches(colour_data, kind):
    _, single = _batches(kind, colour_data["train"])
    loader, double = _batches(kind, colour_data["train"], views=2)
    assert len(loader) == len(single)  # batch_size counts images, not views
    for (x1, y1), (x2, y2) in zip(single, double):
        n = len(y1)
        assert x2.shape == (2 * n, *x1.shape[1:]) and torch.equal(y2, y1.repeat(2))
        if kind == "dali":  # view 0 is the single-view crop ...
            assert torch.equal(x2[:n], x1)
        else:  # ... FFCV decodes once for both views, at the finer DCT scale the two need
            assert (x2[:n].float() - x1.float()).abs().mean() < 4.0
        diff = (x2[:n].float() - x2[n:].float()).flatten(1).abs().mean(dim=1)
        assert (diff > 1.0).float().mean() > 0.8  # ... view 1 an independent one


@pytest.mark.parametrize("kind", ["ffcv", "dali"])
def test_pk_batches_hold_p_classes_of_k(colour_data, kind):
    loader, batches = _batches(kind, colour_data["train"], batch_size=8, pk=4)  # P = 2 of the 4 classes
    assert len(loader) == len(batches) > 0
    for _, y in batches:
        groups = y.view(2, 4)
        assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
    # over the epoch every class is drawn, no sample twice more often than a shuffle would
    counts = np.bincount(torch.cat([y for _, y in batches]).numpy(), minlength=4)
    assert (counts > 0).all()


def test_pk_order_per_rank_whole_classes_and_constant_length():
    labels = np.repeat(np.arange(10), 13)  # 13 per class: leftovers every epoch
    lengths = set()
    for epoch in range(4):
        order = pk_order(5, epoch, np.arange(len(labels)), labels, p=2, k=4, world=2)
        lengths.add(len(order))
        shaped = labels[order].reshape(-1, 2, 2, 4)  # batch, rank, class group, sample
        assert (shaped == shaped[..., :1]).all()  # each group is one class
        flat = shaped[..., 0].reshape(len(shaped), -1)
        assert all(len(set(b)) == 4 for b in flat)  # 4 distinct classes per global batch
        r0 = rank_slice(order, 16, 2, 0)
        r1 = rank_slice(order, 16, 2, 1)
        assert not set(labels[r0[:8]]) & set(labels[r1[:8]])  # whole classes per rank
        assert len(set(order)) > 0.9 * len(order)
    assert len(lengths) == 1
    with pytest.raises(ValueError, match="distinct classes"):
        pk_order(0, 0, np.arange(8), np.repeat([0, 1], 4), p=4, k=2)


def test_train_order_shards_are_disjoint_and_identical_across_ranks():
    idx = np.arange(103)
    parts = [train_order(3, 2, idx, 12, world=3, rank=r) for r in range(3)]
    assert all(len(p) == 8 * 4 for p in parts)
    assert not (set(parts[0]) & set(parts[1])) and not (set(parts[1]) & set(parts[2]))
    again = train_order(3, 2, idx, 12, world=3, rank=1)
    assert np.array_equal(again, parts[1])


def test_pk_batch_not_a_multiple_is_a_clear_error(colour_data):
    with pytest.raises(FastvipError, match="not a multiple of K=3"):
        build_loader("ffcv", colour_data["train"], train=True, batch_size=8, image_size=24, device=CPU, pk=3)
