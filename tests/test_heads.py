"""The network heads: ArcFace (cosine) classifier, auxiliary classifier, fusion, init_from adaptation."""
import math

import pytest
import torch

from fastvip.errors import FastvipError
from fastvip.methods.losses import arcface_logits
from fastvip.methods.net import adapt_init_weights, build_net


def test_arcface_head_trains_with_margin_and_infers_with_scaled_cosine():
    torch.manual_seed(0)
    net = build_net("test_resnet", 5, arcface_scale=16.0)
    x = torch.randn(3, 3, 32, 32)
    net.train()
    out = net(x)
    assert set(out) >= {"logits", "cosine", "embedding"}
    cos = out["cosine"]
    assert cos.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(out["logits"], 16.0 * cos)
    labels = torch.tensor([0, 3, 4])
    margin = arcface_logits(cos, labels, s=16.0, m=0.5)
    theta = torch.acos(cos[torch.arange(3), labels].clamp(-1 + 1e-7, 1 - 1e-7))
    target = margin[torch.arange(3), labels]
    fallback = cos[torch.arange(3), labels] - 0.5 * math.sin(math.pi - 0.5)
    expect = torch.where(theta + 0.5 < math.pi, torch.cos(theta + 0.5), fallback) * 16.0
    torch.testing.assert_close(target, expect)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), 16.0 * net.arcface.cosine(net.backbone.forward_head(
            net.backbone.forward_features(x), pre_logits=True)))


def test_aux_head_shapes_and_fusion_changes_eval_output():
    torch.manual_seed(0)
    net = build_net("resnet18", 7, aux_stage=-2, fusion_weight=0.3)
    x = torch.randn(2, 3, 64, 64)
    out = net.train()(x)
    assert out["aux"].shape == (2, 7) and out["logits"].shape == (2, 7)
    net.eval()
    with torch.no_grad():
        fused = net(x).softmax(dim=1)
        net.fusion_weight = 0.0
        plain = net(x).softmax(dim=1)
    assert fused.sum(dim=1).allclose(torch.ones(2))
    assert not torch.allclose(fused, plain)


def test_fusion_probabilities_are_the_weighted_average():
    torch.manual_seed(0)
    net = build_net("resnet18", 4, aux_stage=1, fusion_weight=0.25).eval()
    x = torch.randn(2, 3, 48, 48)
    captured = {}
    handle = dict(net.backbone.named_modules())[net.aux_module].register_forward_hook(
        lambda m, a, o: captured.setdefault("f", o))
    with torch.no_grad():
        fused = net(x).softmax(dim=1)
        main_p = net.backbone(x).softmax(dim=1)  # the plain timm forward: the final classifier
        aux_p = net.aux(captured["f"]).softmax(dim=1)
    handle.remove()
    torch.testing.assert_close(fused, 0.75 * main_p + 0.25 * aux_p, rtol=1e-4, atol=1e-6)


def test_aux_stage_out_of_range_is_a_clear_error():
    with pytest.raises(FastvipError, match="aux_stage 9 is out of range"):
        build_net("resnet18", 3, aux_stage=9)


def test_init_from_ce_weights_into_arcface_and_aux():
    torch.manual_seed(0)
    ce = build_net("test_resnet", 5)
    arc = build_net("test_resnet", 5, arcface_scale=30.0, aux_stage=-2)
    state, fresh = adapt_init_weights(arc, ce.state_dict())
    arc.load_state_dict(state)
    clf = ce.classifier_key()
    torch.testing.assert_close(arc.arcface.weight, ce.state_dict()[f"{clf}.weight"])
    assert fresh and all(k.startswith("aux.") for k in fresh)
    for k, v in ce.state_dict().items():
        if not k.startswith(clf):
            torch.testing.assert_close(arc.state_dict()[k], v)
    other = build_net("resnet18", 5)
    with pytest.raises(FastvipError, match="do not fit"):
        adapt_init_weights(arc, other.state_dict())


def test_deep_copies_hook_their_own_feature_map():
    import copy
    net = build_net("resnet18", 3, aux_stage=-2).train()
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 32, 32)
    out = twin(x)
    assert out["aux"].shape == (2, 3) and net._aux_fmap is None


def test_classifier_heads_compute_in_float32_under_bf16_autocast():
    """bf16 logits tie the top two classes of ~1 % of images; the heads must not round them."""
    torch.manual_seed(0)
    net = build_net("test_resnet", 200, aux_stage=-2).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    clf = net.backbone.get_classifier()
    assert out["logits"].dtype == torch.float32 and out["aux"].dtype == torch.float32
    torch.testing.assert_close(out["logits"], torch.nn.functional.linear(
        out["embedding"].float(), clf.weight, clf.bias), rtol=1e-6, atol=1e-6)
    arc = build_net("test_resnet", 200, arcface_scale=16.0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = arc(x)
    assert out["cosine"].dtype == torch.float32 and out["logits"].dtype == torch.float32
    w = torch.nn.functional.normalize(arc.arcface.weight, dim=1)
    torch.testing.assert_close(out["cosine"], torch.nn.functional.linear(
        torch.nn.functional.normalize(out["embedding"].float(), dim=1), w), rtol=1e-6, atol=1e-6)
