"""The DeepBlueAI method end to end (stage 1 CE -> stage 2 triplet / ArcFace) and the recipes."""
import dataclasses
import json
import math

import pytest
import torch

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.methods.model import build_model
from fastvip.infer.predict import predict
from fastvip.recipe import Recipe, load_recipe
from fastvip.train import run

from conftest import REPO

Q = Console(quiet=True)
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.py") if not p.name.startswith("_"))  # not __init__.py


def _recipe(data, **kw) -> Recipe:
    base = Recipe(model="test_resnet", train_data=str(data["train"]), val_data=str(data["val"]),
                  image_size=24, epochs=1, batch_size=16, lr=0.4, warmup_epochs=0.5, weight_decay=1e-4,
                  label_smoothing=0.1, crop_scale_min=0.3, workers=2, seed=3, mix_prob=0.5, cutmix_alpha=1.0)
    return dataclasses.replace(base, **kw).validate()


def _epochs(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["event"] == "epoch"]


def test_two_stage_triplet_and_arcface(colour_data, tmp_path):
    stage1 = tmp_path / "ce"
    # (AutoAugment is left out here: its Invert / Solarize / Color ops change the colour classes)
    run(_recipe(colour_data, epochs=2), stage1, console=Q)
    e = _epochs(stage1)[-1]
    assert e["loss_ce"] == pytest.approx(e["train_loss"]) and "loss_triplet" not in e
    assert e["val_top1"] >= 60.0

    triplet = _recipe(colour_data, init_from=str(stage1), pk_samples=4, triplet_weight=1.0, lr=0.05)
    run(triplet, tmp_path / "triplet", console=Q)
    e = _epochs(tmp_path / "triplet")[0]
    assert e["loss_triplet"] > 0 and e["train_loss"] == pytest.approx(e["loss_ce"] + e["loss_triplet"], rel=1e-5)
    assert e["val_top1"] >= 50.0  # started from the CE weights, not from scratch (chance is 25 %)

    arc = _recipe(colour_data, init_from=str(stage1), arcface=True, arcface_scale=16.0, lr=0.05)
    run(arc, tmp_path / "arc", console=Q)
    e = _epochs(tmp_path / "arc")[0]
    assert e["loss_arcface"] > 0 and e["train_loss"] == pytest.approx(e["loss_ce"] + e["loss_arcface"], rel=1e-5)
    # predict uses s * cos(theta): its probabilities reproduce the validation top-1
    result = predict(tmp_path / "arc", colour_data["val"], console=Q)
    assert result["top1"] == pytest.approx(max(e["val_top1"], e.get("val_top1_ema", 0)), abs=1e-6)


def test_missing_init_from_names_the_recipe_to_run_first(colour_data, tmp_path):
    r = _recipe(colour_data, init_from=str(tmp_path / "nope"), init_recipe="recipes/resnest101.py")
    with pytest.raises(FastvipError, match=r"does not exist; train it first: fastvip run recipes/resnest101.py"):
        run(r, tmp_path / "x", console=Q)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_its_model_runs(path):
    recipe = load_recipe(path).validate()
    assert recipe.description
    model = build_model(recipe, 10).train()
    size = recipe.image_size if "swin" in recipe.model else 64  # timm's Swin has a fixed input size
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out["logits"].shape == (2, 10) and torch.isfinite(out["logits"]).all()
    if recipe.aux_weight > 0:
        assert out["aux"].shape == (2, 10)


def test_deepblueai_recipes_follow_the_report():
    r = {p.stem: load_recipe(p) for p in RECIPES}
    for name in ("resnest101", "tresnet_xl", "seresnext101"):
        c = r[name]
        assert c.epochs == 250 and c.optimizer == "sgd" and c.momentum == 0.9 and c.weight_decay == 1e-4
        assert c.auto_augment == "autoaugment" and c.mix_prob == 0.5 and c.cutmix_alpha == 1.0
        assert c.mixup_alpha == 0 and c.crop_scale_min == 0.08 and c.warmup_epochs == 1 and c.warmup_lr == 0
        assert math.isclose(c.scaled_lr(), 0.1 * c.batch_size / 256) and len(c.train_files) == 2
    assert (r["resnest101"].image_size, r["resnest101"].batch_size, r["tresnet_xl"].batch_size) == (448, 128, 256)
    # every model tested at the report's four scales, the 448-px ResNeSt-101 too
    assert r["tresnet_xl"].tta_scales == r["resnest101"].tta_scales == (224, 320, 380, 448)
    # the 64-px proxy tests at its own size (larger views only upsample it)
    assert (r["tiny_vipriors_resnet18"].tta_scales, r["tiny_vipriors_framework"].tencrop_size) == ((64,), 64)
    assert r["seresnext101"].batch_size == 128
    for name, base, term in [("resnest101_triplet", "resnest101", "triplet"),
                             ("resnest101_arcface", "resnest101", "arcface"),
                             ("tresnet_xl_triplet", "tresnet_xl", "triplet"),
                             ("seresnext101_arcface", "seresnext101", "arcface")]:
        c = r[name]
        assert c.epochs == 200 and c.image_size == 224 and c.init_from == f"runs/{base}"
        assert c.init_recipe == f"recipes/{base}.py" and c.model == r[base].model
        assert (c.triplet_weight > 0 and c.pk_samples > 0) if term == "triplet" else c.arcface
    # the proxy's stage-2 rows differ from their control (CE, the same extra epochs) by their loss alone
    ctrl = r["tiny_vipriors_resnet18_stage2"]
    assert ctrl.init_from == "runs/tiny_vipriors_resnet18" and ctrl.epochs < r["tiny_vipriors_resnet18"].epochs
    for name, fields in (("tiny_vipriors_resnet18_triplet", {"pk_samples", "triplet_weight", "triplet_margin"}),
                         ("tiny_vipriors_resnet18_arcface", {"arcface", "arcface_scale", "arcface_margin",
                                                             "arcface_weight"})):
        diff = {k for k, v in ctrl.to_dict().items() if r[name].to_dict()[k] != v} - {"description"}
        assert diff and diff <= fields, (name, diff)


def test_attract_repulse_recipes_follow_the_report():
    r = {p.stem: load_recipe(p) for p in RECIPES}
    base = r["efficientnet_b2_strong_baseline"]
    assert (base.optimizer, base.momentum, base.lr, base.lr_batch, base.batch_size) == ("rmsproptf", 0.9, 0.005, 128, 128)
    assert (base.warmup_epochs, base.warmup_lr, base.weight_decay, base.epochs, base.image_size) == (3, 1e-6, 1e-5, 460, 320)
    assert (base.drop_rate, base.mixup_alpha, base.cutmix_alpha, base.auto_augment) == (0.3, 0.5, 1.0, "autoaugment")
    assert base.random_erasing > 0 and base.label_smoothing > 0 and base.sync_bn
    assert base.opt_eps == 1e-3 and base.tencrop_size == 448  # timm's EfficientNet epsilon; TenCrop at 448
    # Table 3: each row adds one technique to the previous one; the proxy chain has the same shape
    added = [{"views"}, {"loss", "sce_alpha", "sce_beta"}, {"mt_weight", "mt_rampup_epochs", "ema_decay"},
             {"cr_weight", "cr_tau", "cr_delta"}, {"aux_weight", "aux_stage"}, {"fusion_weight"}]
    rows = ["strong_baseline", "two_views", "sce", "mt", "cr", "aux"]
    for chain in ([f"efficientnet_b2_{n}" for n in rows] + ["efficientnet_b2"],
                  [f"tiny_vipriors_{n}" for n in rows] + ["tiny_vipriors_framework"]):
        for (a, b), fields in zip(zip(chain, chain[1:]), added):
            diff = {k for k, v in r[a].to_dict().items() if r[b].to_dict()[k] != v} - {"description"}
            assert diff <= fields and diff, (b, diff)
    full = r["efficientnet_b2"]
    assert full.loss == "sce" and full.mt_weight > 0 and full.cr_weight > 0 and full.views == 2
    assert full.aux_weight > 0 and full.fusion_weight > 0
    # Table 2 and the ensemble members
    assert r["efficientnet_b2_randaugment"].auto_augment == "randaugment"
    assert r["efficientnet_b2_mixup_only"].cutmix_alpha == 0 and r["efficientnet_b2_cutmix_only"].mixup_alpha == 0
    for name in ("efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
                 "resnet152", "seresnet152"):
        assert r[name].cr_weight == full.cr_weight and len(r[name].train_files) == 2
    assert r["efficientnet_b7_448"].image_size == 448 and r["efficientnet_b7_448"].epochs == 460
    assert {r[n].tencrop_size for n in ("efficientnet_b2", "efficientnet_b7", "efficientnet_b7_448")} == {448}
    assert all(r[n].views == 2 for n in r if r[n].mt_weight > 0)  # the teacher sees the other view
    ft = r["efficientnet_b7_448_finetune"]
    assert ft.image_size == 448 and ft.epochs < 50 and ft.init_from == "runs/efficientnet_b7"
    for name in ("table1_resnet50", "table1_resnext101_32x4d", "table1_swin", "table1_efficientnet_b4"):
        assert r[name].auto_augment == "none" and r[name].mix_prob == 0 and r[name].drop_rate == 0.3


def test_triplet_term_cannot_be_lowered_by_shrinking_the_embedding():
    from fastvip.methods.objective import loss_terms
    torch.manual_seed(0)
    recipe = Recipe(triplet_weight=1.0, triplet_margin=0.3)
    emb = torch.randn(8, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    targets = torch.nn.functional.one_hot(labels, 4).float()
    out = {"logits": torch.randn(8, 4), "embedding": emb}
    big = loss_terms(recipe, out, targets, labels)["loss_triplet"]
    small = loss_terms(recipe, dict(out, embedding=emb * 1e-3), targets, labels)["loss_triplet"]
    torch.testing.assert_close(big, small)  # the collapse seen on raw features is not a way down
