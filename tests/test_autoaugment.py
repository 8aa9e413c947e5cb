"""Batched per-sample augmentations must match torchvision / timm image by image."""
from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from torchvision.transforms import (
    AutoAugment,
    AutoAugmentPolicy,
    InterpolationMode,
    RandAugment,
)
from torchvision.transforms.autoaugment import _apply_op

from fastvip.methods import autoaugment as aa

H, W = 32, 40  # non-square so H/W mix-ups show


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    x = torch.randint(0, 256, (n, 3, H, W), generator=g, dtype=torch.uint8)
    if n >= 4:
        x[1] = torch.randint(60, 120, (3, H, W), generator=g, dtype=torch.uint8)  # narrow range: AutoContrast
        x[2, :, : H // 2] = 200  # large flat region: Equalize histogram with a dominant bin
        x[3] = 77  # constant: Equalize's step == 0 branch, Contrast/AutoContrast degenerate cases
    return x


def _tv_space(num_bins: int):
    return AutoAugment()._augmentation_space(num_bins, (H, W))


def test_tables_match_torchvision():
    tv = AutoAugment(AutoAugmentPolicy.IMAGENET)
    assert [tuple(p) for p in tv.policies] == list(aa.POLICIES["imagenet"])
    assert tuple(tv._augmentation_space(10, (H, W))) == aa._AA_OPS
    assert tuple(RandAugment()._augmentation_space(31, (H, W))) == aa._RA_OPS
    for bins in (10, 31):
        ours = aa._augmentation_space(bins, (H, W))
        for name, (mags, signed) in RandAugment()._augmentation_space(bins, (H, W)).items():
            assert torch.equal(ours[name][0], mags) and ours[name][1] == signed, name
        for name, (mags, signed) in _tv_space(bins).items():
            assert torch.equal(ours[name][0], mags) and ours[name][1] == signed, name


def _op_cases():
    space = _tv_space(10)
    for name, (mags, signed) in space.items():
        if mags.ndim == 0:
            yield name, 0.0
            continue
        for b in (1, 5, 9):
            m = float(mags[b].item())
            yield name, m
            if signed:
                yield name, -m


@pytest.mark.parametrize("op_name,magnitude", list(_op_cases()))
def test_single_op_matches_torchvision(op_name, magnitude):
    x = _images()
    got = aa._apply(x, op_name, magnitude)
    want = torch.stack([_apply_op(img, op_name, magnitude, InterpolationMode.NEAREST, None) for img in x])
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got, want)
    identity = magnitude == 0.0 and op_name not in ("AutoContrast", "Equalize", "Invert")
    if not identity and not (op_name == "Posterize" and magnitude == 8.0):  # 8 bits keeps every value
        assert not torch.equal(got, x)  # the comparison must not be vacuous


@pytest.mark.parametrize("op_name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_fill_matches_torchvision(op_name):
    x = _images()
    mag = float(_tv_space(10)[op_name][0][7].item())
    fill = [10.0, 128.0, 250.0]
    got = aa._apply(x, op_name, -mag, fill)
    want = torch.stack([_apply_op(img, op_name, -mag, InterpolationMode.NEAREST, fill) for img in x])
    assert torch.equal(got, want)
    assert (got == torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1)).all(1).any()


def _grouped(x, op_names, magnitudes):
    """Run the grouping machinery with an explicit per-sample (op, magnitude) assignment."""
    ops = tuple(sorted(set(op_names)))
    space = {name: (torch.tensor(sorted({abs(m) for m in magnitudes}), dtype=torch.float32), True)
             for name in ops}
    op_idx = torch.tensor([ops.index(o) for o in op_names])
    bins = torch.tensor([int((space[o][0] == abs(m)).nonzero()[0]) for o, m in zip(op_names, magnitudes)])
    negative = torch.tensor([m < 0 for m in magnitudes])
    out = x.clone()
    aa._apply_grouped(out, ops, op_idx, bins, negative, space, None)
    return out


def test_grouping_mixes_ops_and_signs_per_sample():
    x = _images(8, seed=3)
    op_names = ["Rotate", "Brightness", "Rotate", "ShearX", "Brightness", "Rotate", "ShearX", "Rotate"]
    magnitudes = [20.0, 0.5, -20.0, 0.25, -0.5, 10.0, -0.25, 20.0]
    got = _grouped(x, op_names, magnitudes)
    for i, (o, m) in enumerate(zip(op_names, magnitudes)):
        want = _apply_op(x[i], o, float(torch.tensor(m)), InterpolationMode.NEAREST, None)
        assert torch.equal(got[i], want), i


def _reference_autoaugment(x, draws):
    outs = []
    for i, img in enumerate(x):
        t = AutoAugment(AutoAugmentPolicy.IMAGENET)
        t.get_params = lambda n, i=i: (int(draws["policy_id"][i]), draws["probs"][i], draws["signs"][i])
        outs.append(t(img))
    return torch.stack(outs)


def test_auto_augment_matches_torchvision_per_sample():
    x = _images(48, seed=1)
    draws = aa._draw_autoaugment(len(x), _gen(7))
    got = aa.auto_augment(x, _gen(7))
    assert torch.equal(got, _reference_autoaugment(x, draws))
    applied = torch.tensor([[draws["probs"][i, j] <= aa.POLICIES["imagenet"][draws["policy_id"][i]][j][1]
                             for j in range(2)] for i in range(len(x))])
    assert applied.any(1).sum() > len(x) // 2  # enough samples were actually transformed
    assert not torch.equal(got, x)


def test_auto_augment_fill_matches_torchvision():
    x = _images(32, seed=2)
    draws = aa._draw_autoaugment(len(x), _gen(11))
    got = aa.auto_augment(x, _gen(11), fill=40)
    outs = []
    for i, img in enumerate(x):
        t = AutoAugment(AutoAugmentPolicy.IMAGENET, fill=40)
        t.get_params = lambda n, i=i: (int(draws["policy_id"][i]), draws["probs"][i], draws["signs"][i])
        outs.append(t(img))
    assert torch.equal(got, torch.stack(outs))


def test_auto_augment_samples_are_independent():
    img = _images(1, seed=5)
    x = img.expand(64, -1, -1, -1).contiguous()
    draws = aa._draw_autoaugment(64, _gen(0))
    assert len(torch.unique(draws["policy_id"])) >= 10
    assert draws["signs"].float().mean().item() == pytest.approx(0.5, abs=0.2)
    out = aa.auto_augment(x, _gen(0))
    distinct = {out[i].numpy().tobytes() for i in range(len(out))}
    assert len(distinct) >= 10


def test_determinism():
    x = _images(16, seed=4)
    for fn in (aa.auto_augment, aa.rand_augment):
        a, b = fn(x, _gen(123)), fn(x, _gen(123))
        assert torch.equal(a, b)
        assert not torch.equal(a, fn(x, _gen(124)))
    assert torch.equal(x, _images(16, seed=4))  # input untouched


@pytest.mark.parametrize("fn", [aa.auto_augment, aa.rand_augment])
def test_dtype_shape_memory_format(fn):
    x = _images(16, seed=6)
    cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = fn(cl, _gen(9))
    out = fn(x, _gen(9))
    assert out_cl.dtype == torch.uint8 and out_cl.shape == x.shape
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    assert out.is_contiguous()
    assert torch.equal(out, out_cl)


def test_empty_batch():
    x = torch.zeros((0, 3, H, W), dtype=torch.uint8)
    assert aa.auto_augment(x, _gen(0)).shape == x.shape
    assert aa.rand_augment(x, _gen(0)).shape == x.shape


def _reference_randaugment(x, draws, num_ops, magnitude, num_bins):
    outs = []
    signed = {name: s for name, (_, s) in RandAugment()._augmentation_space(num_bins, (H, W)).items()}
    for i, img in enumerate(x):
        # replay this sample's draws through torchvision's own forward, in the order it calls randint
        script = []
        for j in range(num_ops):
            op = int(draws["op_index"][i, j])
            script.append((len(aa._RA_OPS), op))
            if signed[aa._RA_OPS[op]]:
                script.append((2, int(draws["signs"][i, j])))

        def fake_randint(high, size, *, _script=script):
            want_high, value = _script.pop(0)
            assert high == want_high
            return torch.tensor([value])

        t = RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_bins)
        with mock.patch("torchvision.transforms.autoaugment.torch.randint", side_effect=fake_randint):
            outs.append(t(img))
        assert not script
    return torch.stack(outs)


@pytest.mark.parametrize("num_ops,magnitude,num_bins", [(2, 9, 31), (3, 25, 31), (1, 5, 10)])
def test_rand_augment_matches_torchvision_per_sample(num_ops, magnitude, num_bins):
    x = _images(40, seed=8)
    draws = aa._draw_randaugment(len(x), _gen(21), num_ops)
    got = aa.rand_augment(x, _gen(21), num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_bins)
    assert torch.equal(got, _reference_randaugment(x, draws, num_ops, magnitude, num_bins))
    assert len(torch.unique(draws["op_index"])) == len(aa._RA_OPS)  # every op exercised
    assert not torch.equal(got, x)


def _boxes(x, out):
    """Bounding box of the changed pixels per sample, asserting they form one solid rectangle."""
    changed = (out != x).any(1)
    boxes = []
    for i in range(len(x)):
        ys, xs = torch.nonzero(changed[i], as_tuple=True)
        if len(ys) == 0:
            boxes.append(None)
            continue
        top, bottom, left, right = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        h, w = bottom - top + 1, right - left + 1
        assert changed[i, top:bottom + 1, left:right + 1].all() and int(changed[i].sum()) == h * w
        boxes.append((top, left, h, w))
    return boxes


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_random_erasing_boxes(mode):
    n = 64
    x = torch.randn((n, 3, H, W), generator=_gen(30)) + 5.0  # offset so "const" zeros differ from input
    scale = (0.02, 1 / 3)
    out = aa.random_erasing(x, _gen(31), p=1.0, scale=scale, mode=mode)
    assert out.shape == x.shape and out.dtype == x.dtype
    boxes = _boxes(x, out)
    assert all(b is not None for b in boxes)  # p=1: every sample erased once
    for (top, left, h, w), o in zip(boxes, out):
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        assert h < H and w < W  # timm only accepts boxes strictly smaller than the image
        # h and w are rounded from sqrt(target * aspect) and sqrt(target / aspect)
        assert (h - 0.5) * (w - 0.5) <= scale[1] * H * W and (h + 0.5) * (w + 0.5) >= scale[0] * H * W
        region = o[:, top:top + h, left:left + w]
        if mode == "const":
            assert (region == 0).all()
        elif mode == "rand":
            assert (region == region[:, :1, :1]).all()
        else:
            assert region.std().item() == pytest.approx(1.0, abs=0.5) if h * w > 20 else True
    assert len(set(boxes)) > n // 2  # per-sample boxes
    ratios = torch.tensor([h / w for _, _, h, w in boxes])
    assert ratios.min() < 0.8 and ratios.max() > 1.25  # aspect ratio actually varies
    assert torch.equal(out, aa.random_erasing(x, _gen(31), p=1.0, scale=scale, mode=mode))


def test_random_erasing_probability_and_no_fit():
    x = torch.randn((200, 3, H, W), generator=_gen(40))
    assert torch.equal(aa.random_erasing(x, _gen(41), p=0.0), x)
    erased = sum(b is not None for b in _boxes(x, aa.random_erasing(x, _gen(41), p=0.25)))
    assert 25 <= erased <= 75
    # boxes covering >= 99% of the image never fit strictly inside it: every sample is left alone
    assert torch.equal(aa.random_erasing(x, _gen(42), p=1.0, scale=(0.99, 1.0)), x)


def test_random_erasing_vectorised_draw_matches_timm_geometry():
    d = aa._draw_erasing(500, H, W, _gen(50), 1.0, (0.02, 1 / 3), (0.3, 1 / 0.3))
    assert d["erase"].all()
    assert (d["top"] >= 0).all() and (d["top"] + d["h"] <= H).all()
    assert (d["left"] >= 0).all() and (d["left"] + d["w"] <= W).all()
    # positions cover the full inclusive range [0, H - h] like random.randint
    assert (d["top"] == 0).any() and (d["top"] == H - d["h"]).any()
    log_aspect = torch.log(d["h"].double() / d["w"].double())
    assert log_aspect.min() < math.log(0.5) and log_aspect.max() > math.log(2.0)


def test_random_erasing_default_geometry_is_timms():
    import inspect

    from timm.data.random_erasing import RandomErasing
    params = inspect.signature(aa.random_erasing).parameters
    timm_erasing = RandomErasing(probability=1.0, device="cpu")
    lo, hi = params["ratio"].default
    assert (math.log(lo), math.log(hi)) == pytest.approx(timm_erasing.log_aspect_ratio, abs=1e-12)
    assert params["scale"].default == (timm_erasing.min_area, timm_erasing.max_area)


def test_random_erasing_channels_last_and_errors():
    x = torch.randn((8, 3, H, W), generator=_gen(60)).contiguous(memory_format=torch.channels_last)
    out = aa.random_erasing(x, _gen(61), p=1.0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, aa.random_erasing(x.contiguous(), _gen(61), p=1.0))
    with pytest.raises(ValueError, match="mode"):
        aa.random_erasing(x, _gen(0), p=1.0, mode="bogus")


def test_augment_batch_dispatch():
    x = _images(8, seed=9)
    assert aa.augment_batch(x, _gen(1), "none") is x
    assert torch.equal(aa.augment_batch(x, _gen(1), "autoaugment"), aa.auto_augment(x, _gen(1)))
    assert torch.equal(aa.augment_batch(x, _gen(1), "randaugment"), aa.rand_augment(x, _gen(1)))
    with pytest.raises(ValueError, match="randaugment"):
        aa.augment_batch(x, _gen(1), "mixup")
    with pytest.raises(ValueError, match="imagenet"):
        aa.auto_augment(x, _gen(1), policy="cifar100")
    with pytest.raises(TypeError):
        aa.auto_augment(x.float(), _gen(1))
