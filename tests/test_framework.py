"""The 2021 Attract-and-Repulse framework in the trainer: two views, SCE, Mean Teacher, CR, aux + fusion."""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from fastvip.console import Console
from fastvip.train.ema import EMA
from fastvip.errors import FastvipError
from fastvip.infer.predict import predict
from fastvip.recipe import Recipe
from fastvip.train import StepContext, prepare_batch, run

Q = Console(quiet=True)


def _recipe(data, **kw) -> Recipe:
    base = Recipe(model="resnet18", train_data=str(data["train"]), val_data=str(data["val"]),
                  image_size=32, epochs=1, batch_size=16, lr=0.01, lr_batch=16, warmup_epochs=0.5,
                  weight_decay=1e-5, label_smoothing=0.1, crop_scale_min=0.3, workers=2, seed=3,
                  optimizer="rmsproptf", momentum=0.9, drop_rate=0.3, random_erasing=0.25, mix_prob=1.0,
                  mixup_alpha=0.5, cutmix_alpha=1.0, loss="sce", mt_weight=1.0, mt_rampup_epochs=0.5,
                  ema_decay=0.9, views=2, cr_weight=0.1, aux_weight=0.4, fusion_weight=0.3)
    return dataclasses.replace(base, **kw).validate()


def test_full_framework_logs_every_term_and_predict_applies_fusion(colour_data, tmp_path):
    recipe = _recipe(colour_data, epochs=2)
    run(recipe, tmp_path / "r", console=Q)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["views"] == 2
    epoch = lines[-1]
    for term in ("loss_sce", "loss_mt", "loss_cr", "loss_aux"):
        assert epoch[term] > 0, term
    assert "loss_ce" not in epoch
    total = sum(epoch[t] for t in ("loss_sce", "loss_mt", "loss_cr", "loss_aux"))
    assert epoch["train_loss"] == pytest.approx(total, rel=1e-4)
    assert {"val_top1", "val_top1_ema"} <= epoch.keys()  # student and teacher
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    result = predict(tmp_path / "r", colour_data["val"], console=Q)
    # predict loads the better of student / teacher and fuses the auxiliary head, as validation did
    assert result["top1"] == pytest.approx(best["top1"], abs=1e-6) and result["fusion"] == 0.3
    # --fusion 0: the same weights, the main classifier alone (the Table 3 row before fusion)
    alone = predict(tmp_path / "r", colour_data["val"], fusion=0.0, out=tmp_path / "alone.npz", console=Q)
    fused, plain = np.load(result["out"])["probs"], np.load(alone["out"])["probs"]
    assert alone["fusion"] == 0.0 and fused.shape == plain.shape and not np.allclose(fused, plain)
    with pytest.raises(FastvipError, match=r"--fusion 1.5: .*fusion_weight must be in \[0, 1\)"):
        predict(tmp_path / "r", colour_data["val"], fusion=1.5, console=Q)


def test_2021_recipe_runs_as_is_in_one_cpu_process(colour_data, tmp_path, capsys):
    """recipes/efficientnet_b2.py (sync_bn, RMSpropTF, two views, SCE + MT + CR + aux) on a laptop:
    one process on CPU trains with the issue's --set, and reports the last epoch of the
    weights it declares (the teacher, EMA) apart from the best-of-every-epoch figure."""
    from fastvip.cli import main
    out = tmp_path / "b2"
    rc = main(["run", "recipes/efficientnet_b2.py", "--out", str(out), "--quiet", "--set", "model=resnet18",
               "epochs=1", "image_size=64", "batch_size=32", f"train_data={colour_data['train']}",
               f"val_data={colour_data['val']}"])
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["views"] == 2 and lines[0]["world_size"] == 1
    epoch = lines[-1]
    assert epoch["event"] == "epoch" and epoch["loss_mt"] > 0 and epoch["loss_cr"] > 0
    assert (epoch["last_weights"], epoch["last_top1"]) == ("ema", epoch["val_top1_ema"])
    best = json.loads((out / "best.json").read_text())
    assert (best["last_epoch"], best["last_weights"], best["last_top1"]) == (1, "ema", epoch["val_top1_ema"])
    assert (best["last_top1_raw"], best["last_top1_ema"]) == (epoch["val_top1"], epoch["val_top1_ema"])
    assert best["top1"] == max(epoch["val_top1"], epoch["val_top1_ema"])  # selected on val, kept apart
    # last.pt holds the declared weights: predicting with them reproduces last_top1
    result = predict(out, colour_data["val"], weights="last", console=Q)
    assert result["weights"] == "ema" and result["top1"] == pytest.approx(best["last_top1"], abs=1e-6)


def test_two_views_get_the_same_mix_and_independent_augmentation(colour_data):
    from fastvip.loaders import build_loader
    recipe = _recipe(colour_data, auto_augment="autoaugment")
    loader = build_loader("ffcv", colour_data["train"], train=True, batch_size=16, image_size=32,
                          device=torch.device("cpu"), seed=3, workers=1, views=2)
    images, labels = next(iter(loader))
    ctx = StepContext(recipe, torch.device("cpu"), None, 4)
    for step in range(6):
        x, targets, _ = prepare_batch(images.clone(), labels.clone(), ctx, step)
        torch.testing.assert_close(targets[:16], targets[16:])  # identical soft labels per image pair
        assert (x[:16] - x[16:]).abs().mean() > 0.1  # different pixels
        again, t2, _ = prepare_batch(images.clone(), labels.clone(), ctx, step)
        assert torch.equal(again, x) and torch.equal(t2, targets)  # keyed on (seed, step)


def test_fusion_is_inference_only_the_teacher_target_is_its_classifier():
    """Table 3's "+ fusion" row changes inference, not training: the same weights and batch
    give the same loss terms (Mean Teacher's included) with and without fusion, and the
    teacher's target is its own classifier's softmax, not the fused output."""
    from fastvip.methods.model import build_model
    from fastvip.train import train_step
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=rng)
    labels = torch.arange(8) % 4  # 4 images x 2 views
    results = {}
    for fusion in (0.0, 0.3):
        recipe = Recipe(model="resnet18", image_size=32, batch_size=4, views=2, loss="sce", mt_weight=1.0,
                        aux_weight=0.4, fusion_weight=fusion, optimizer="sgd", seed=1).validate()
        torch.manual_seed(0)
        model = build_model(recipe, 4)
        teacher = copy.deepcopy(model).eval()
        with torch.no_grad():  # a teacher that differs from the student, so the KL term is not zero
            for p in teacher.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        model.train()
        ctx = StepContext(recipe, torch.device("cpu"), None, 4, teacher=teacher)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        results[fusion] = train_step(model, opt, scaler, [(images.clone(), labels.clone())], ctx, step=0)
        if fusion:  # the fused eval output really differs from the classifier the target is taken from
            fused = teacher(prepare_batch(images.clone(), labels.clone(), ctx, 0)[0])
            plain = teacher.outputs(prepare_batch(images.clone(), labels.clone(), ctx, 0)[0])["logits"]
            assert (fused.softmax(1) - plain.softmax(1)).abs().max() > 1e-3
    assert results[0.0]["loss_mt"] > 0
    for term in results[0.0]:
        torch.testing.assert_close(results[0.3][term], results[0.0][term])


def test_teacher_sees_the_other_view_and_stays_in_eval_mode():
    """Mean Teacher on two-view batches (report Fig. 1): the student's row for one view of an
    image is compared with the teacher's output for the other view of the same image."""
    from fastvip.methods.losses import consistency_kl
    from fastvip.methods.model import build_model
    from fastvip.train import train_step
    recipe = Recipe(model="resnet18", image_size=32, batch_size=4, views=2, mt_weight=1.0, label_smoothing=0.0,
                    optimizer="sgd", seed=1).validate()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen)  # rows i, i + 4: one image
    labels = torch.arange(8) % 4
    torch.manual_seed(0)
    model = build_model(recipe, 4).train()
    teacher = copy.deepcopy(model).eval()
    with torch.no_grad():  # confident targets, so which row the teacher is paired with shows in the loss
        teacher.backbone.get_classifier().weight.mul_(100.0)
    before = copy.deepcopy(teacher.state_dict())
    ctx = StepContext(recipe, torch.device("cpu"), None, 4, teacher=teacher)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    terms = train_step(model, opt, torch.amp.GradScaler("cpu", enabled=False), [(images.clone(), labels)], ctx, 0)
    x = prepare_batch(images.clone(), labels, ctx, 0)[0]
    with torch.no_grad():
        student, target = model(x)["logits"], teacher.outputs(x)["logits"]
    other = torch.cat([target[4:], target[:4]])
    torch.testing.assert_close(terms["loss_mt"], consistency_kl(student, other))
    assert (terms["loss_mt"] - consistency_kl(student, target)).abs() > 0.01  # the same view would differ
    # the teacher's target is the averaged model as validated: eval mode, BN statistics untouched
    assert not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_teacher_is_the_ema_formula():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = EMA(student, decay=0.99, warmup=False)
    before = copy.deepcopy(teacher.module.state_dict())
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student, step=100)
    for k, v in teacher.module.state_dict().items():
        torch.testing.assert_close(v, 0.99 * before[k] + 0.01 * student.state_dict()[k])
    assert all(not p.requires_grad for p in teacher.module.parameters())
    warm = EMA(student, decay=0.999)
    assert warm.decay_at(0) == pytest.approx(1 / 10) and warm.decay_at(10**6) == 0.999


def test_cr_and_mean_teacher_need_two_views(capsys):
    from fastvip.cli import main
    with pytest.raises(FastvipError, match="two-view"):
        Recipe(cr_weight=0.1, views=1).validate()
    with pytest.raises(FastvipError, match="mt_weight > 0 needs two-view batches"):
        Recipe(mt_weight=1.0, views=1).validate()
    for command in ("show", "run"):  # refused where recipes are resolved, before any data is read
        assert main([command, "recipes/tiny_vipriors_mt.py", "--set", "views=1"]) == 2
        assert "mt_weight > 0 needs two-view batches (views=2)" in capsys.readouterr().err
    with pytest.raises(FastvipError, match="fusion_weight needs the auxiliary head"):
        Recipe(fusion_weight=0.3).validate()
