"""CutMix / Mixup on the device: label weights, pairing of two views, dominant labels."""
import numpy as np
import pytest
import torch

from fastvip.methods.losses import smooth_targets, soft_cross_entropy
from fastvip.methods.mix import apply_mix, dominant_labels, draw_mix


def _draw(seed, n=8, views=1, h=20, w=30, **kw):
    args = dict(prob=1.0, cutmix_alpha=1.0, mixup_alpha=0.0, switch_prob=0.5)
    args.update(kw)
    return draw_mix(np.random.default_rng(seed), n, views, h, w, generator=torch.Generator().manual_seed(seed),
                    device=torch.device("cpu"), **args)


def test_cutmix_label_weight_is_the_pasted_area():
    n, h, w = 8, 20, 30
    seen_clipped = False
    for seed in range(40):
        mix = _draw(seed, n, h=h, w=w)
        assert mix.kind == "cutmix"
        # image i is filled with the value i: the share of foreign pixels is the pasted area
        images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
        targets = torch.eye(n)
        mixed, t = apply_mix(mix, images, targets)
        for i in range(n):
            j = int(mix.partner[i])
            if j == i:
                continue
            own = (mixed[i, 0] == i).float().mean().item()
            assert t[i, i].item() == pytest.approx(own, abs=1e-6)
            assert t[i, j].item() == pytest.approx(1 - own, abs=1e-6)
        y0, y1, x0, x1 = mix.box
        seen_clipped |= 0 < (y1 - y0) * (x1 - x0) and (y0 == 0 or x0 == 0 or y1 == h or x1 == w)
        assert t.sum(dim=1).allclose(torch.ones(n))
    assert seen_clipped  # boxes cut by the border were among them, and still matched


def test_mixup_and_label_smoothing_compose():
    mix = _draw(1, 4, cutmix_alpha=0.0, mixup_alpha=0.5)
    assert mix.kind == "mixup" and 0 < mix.lam < 1
    images = torch.randn(4, 3, 5, 5)
    labels = torch.tensor([0, 1, 2, 3])
    targets = smooth_targets(labels, 4, 0.1)
    x, t = apply_mix(mix, images, targets)
    torch.testing.assert_close(x, mix.lam * images + (1 - mix.lam) * images[mix.partner])
    # the soft loss equals the lam-weighted pair of label-smoothed cross-entropies
    logits = torch.randn(4, 4)
    expected = mix.lam * torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1) + \
        (1 - mix.lam) * torch.nn.functional.cross_entropy(logits, labels[mix.partner], label_smoothing=0.1)
    torch.testing.assert_close(soft_cross_entropy(logits, t), expected)


def test_two_views_share_partner_lam_and_box():
    n = 6
    mix = _draw(3, n, views=2)
    first, second = mix.partner[:n], mix.partner[n:]
    assert torch.equal(second, first + n)  # view-2 rows mix with view-2 rows of the same partner image
    labels = torch.arange(n).repeat(2)
    _, t = apply_mix(mix, torch.randn(2 * n, 3, 20, 30), smooth_targets(labels, n, 0.0))
    torch.testing.assert_close(t[:n], t[n:])  # the views of an image keep identical soft labels


def test_dominant_label_and_no_mix():
    labels = torch.tensor([5, 6, 7, 8])
    mix = _draw(0, 4, cutmix_alpha=0.0, mixup_alpha=1.0)
    expect = labels if mix.lam >= 0.5 else labels[mix.partner]
    assert torch.equal(dominant_labels(mix, labels), expect)
    none = _draw(0, 4, prob=0.0)
    assert none.kind == "none" and torch.equal(dominant_labels(none, labels), labels)
    x = torch.randn(4, 3, 4, 4)
    assert apply_mix(none, x, torch.eye(4))[0] is x


def test_mix_probability_and_switch_are_honoured():
    kinds = [_draw(s, 4, prob=0.5, mixup_alpha=0.5, switch_prob=0.5).kind for s in range(400)]
    counts = {k: kinds.count(k) for k in ("none", "cutmix", "mixup")}
    assert 150 < counts["none"] < 250 and 60 < counts["cutmix"] < 140 and 60 < counts["mixup"] < 140
    a, b = _draw(9, 8), _draw(9, 8)
    assert a.lam == b.lam and a.box == b.box and torch.equal(a.partner, b.partner)
