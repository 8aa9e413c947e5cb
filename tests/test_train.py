import dataclasses
import json

import pytest
import torch

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.recipe import Recipe
from fastvip.train import run

Q = Console(quiet=True)


def _recipe(data, **kw) -> Recipe:
    base = Recipe(model="test_resnet", train_data=str(data["train"]), val_data=str(data["val"]),
                  image_size=24, epochs=2, batch_size=16, lr=0.4, warmup_epochs=0.5,
                  weight_decay=1e-4, label_smoothing=0.1, crop_scale_min=0.3, workers=2, seed=3)
    return dataclasses.replace(base, **kw).validate()


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_epochs_learn_the_easy_set(colour_data, tmp_path):
    summary = run(_recipe(colour_data, ema=True, ema_decay=0.9), tmp_path / "r", console=Q)
    lines = _metrics(tmp_path / "r")
    start, epochs = lines[0], lines[1:]
    assert start["event"] == "start" and start["loader"] == "ffcv" and start["world_size"] == 1
    assert start["device"] == "cpu" and start["model"] == "test_resnet"
    assert start["resumed_from_epoch"] is None
    assert start["channels_last"] is False and start["optimizer_impl"] == "default"  # not measured; CPU
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert {"train_loss", "loss_ce", "val_top1", "val_top1_ema", "lr", "img_per_s"} <= e.keys()
    # 4 colour classes: chance is 25%
    assert epochs[-1]["val_top1"] >= 70.0
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert summary["best_top1"] == max(max(e["val_top1"], e["val_top1_ema"]) for e in epochs)
    # the figure to compare: the last epoch of the declared weights (ema=true: EMA), not the best of all
    last = {"last_epoch": 2, "last_weights": "ema", "last_top1": epochs[-1]["val_top1_ema"],
            "last_top1_raw": epochs[-1]["val_top1"], "last_top1_ema": epochs[-1]["val_top1_ema"]}
    assert {k: summary[k] for k in last} == last
    assert (epochs[-1]["last_top1"], epochs[-1]["last_weights"]) == (last["last_top1"], "ema")
    assert "last_top1" not in epochs[0]  # only the schedule's final epoch line carries it
    run_dir = tmp_path / "r"
    assert (run_dir / "recipe.json").is_file() and (run_dir / "recipe.py").is_file()
    best = json.loads((run_dir / "best.json").read_text())
    assert best["weights"] in ("raw", "ema") and {k: best[k] for k in last} == last
    assert json.loads((run_dir / "recipe.json").read_text())["model"] == "test_resnet"


def _as_written_before_run_state(path):
    """Rewrite a checkpoint in the layout fastvip wrote before the run state was one dataclass:
    its fields as top-level keys, no skipped-step count, rates or memory format."""
    ckpt = torch.load(path, weights_only=True)
    state = ckpt.pop("run_state")
    ckpt.pop("channels_last")
    ckpt.update({k: state[k] for k in ("step", "best", "last", "mid_epoch")})
    torch.save(ckpt, path)


def test_resume_equals_uninterrupted(colour_data, tmp_path):
    # device augmentation included: its draws are keyed on (seed, step), not on history; cut in the
    # middle of a progressive-resizing ramp (16 -> 20 -> 24 px over 3 epochs), validated at 28 px
    # after epochs 2 and 3 only (eval_every=2, and the last)
    recipe = _recipe(colour_data, ema=True, ema_decay=0.9, auto_augment="autoaugment", mix_prob=0.5,
                     random_erasing=0.25, epochs=3, res_start=16, res_ramp_start=0, res_ramp_end=2,
                     res_multiple=4, eval_size=28, eval_every=2)
    run(recipe, tmp_path / "full", console=Q)
    run(recipe, tmp_path / "cut", console=Q, stop_after=1)
    assert [e["epoch"] for e in _metrics(tmp_path / "cut")[1:]] == [1]
    with pytest.raises(FastvipError, match="--resume"):
        run(recipe, tmp_path / "cut", console=Q)
    _as_written_before_run_state(tmp_path / "cut" / "last.pt")  # older checkpoints still resume
    run(recipe, tmp_path / "cut", console=Q, resume=True)

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert full["run_state"]["step"] == cut["run_state"]["step"] and full["epoch"] == cut["epoch"] == 3
    for key in ("model", "ema"):
        for name, t in full[key].items():
            assert torch.equal(cut[key][name], t), f"{key}.{name}"  # bit-exact
    lines = _metrics(tmp_path / "cut")
    starts = [l for l in lines if l["event"] == "start"]
    assert [s["resumed_from_epoch"] for s in starts] == [None, 1]
    assert [l["epoch"] for l in lines if l["event"] == "epoch"] == [1, 2, 3]
    fl = [l for l in _metrics(tmp_path / "full") if l["event"] == "epoch"]
    cl = [l for l in lines if l["event"] == "epoch"]
    assert [l["image_size"] for l in cl] == [l["image_size"] for l in fl] == [16, 20, 24]
    assert {s["eval_size"] for s in starts} == {28}
    assert ["val_top1" in l for l in cl] == ["val_top1" in l for l in fl] == [False, True, True]
    for a, b in zip(cl, fl):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a.get("val_top1") == pytest.approx(b.get("val_top1"), abs=1e-6)
    best = json.loads((tmp_path / "cut" / "best.json").read_text())
    assert best["epoch"] in (2, 3) and best["last_epoch"] == 3  # chosen among validated epochs only


def test_same_seed_same_losses_and_resume_needs_same_recipe(colour_data, tmp_path):
    r = _recipe(colour_data, epochs=1, val_data="")
    run(r, tmp_path / "a", console=Q)
    run(r, tmp_path / "b", console=Q)
    la = _metrics(tmp_path / "a")[1]["train_loss"]
    assert la == _metrics(tmp_path / "b")[1]["train_loss"]
    with pytest.raises(FastvipError, match="changed: lr"):
        run(dataclasses.replace(r, lr=0.1), tmp_path / "a", console=Q, resume=True)


def test_init_from_loads_weights_only(colour_data, tmp_path):
    run(_recipe(colour_data, epochs=1), tmp_path / "stage1", console=Q)
    r2 = _recipe(colour_data, epochs=1, init_from=str(tmp_path / "stage1"), lr=1e-6, warmup_epochs=0)
    run(r2, tmp_path / "stage2", console=Q)
    s1 = _metrics(tmp_path / "stage1")[-1]["val_top1"]
    s2 = _metrics(tmp_path / "stage2")[-1]["val_top1"]
    assert abs(s1 - s2) <= 5.0  # starts where stage 1 ended (lr ~0 keeps it there)
    with pytest.raises(FastvipError, match="init_from .* does not exist; train"):
        run(_recipe(colour_data, init_from=str(tmp_path / "missing")), tmp_path / "s3", console=Q)


@pytest.mark.parametrize("kw,message", [
    (dict(batch_size=512), "larger than the 96 training images"),
    (dict(model="resnet_nonexistent18"), "unknown timm model"),
    (dict(train_data="missing.beton"), "does not exist"),
])
def test_setup_errors(colour_data, tmp_path, kw, message):
    with pytest.raises(FastvipError, match=message):
        run(_recipe(colour_data, **kw), tmp_path / "r", console=Q)


def test_class_mismatch_between_train_and_val(colour_data, tmp_path):
    from conftest import make_colour_tree
    from fastvip.data.pack import pack
    make_colour_tree(tmp_path / "three", 4, seed=5, classes=3)
    pack(tmp_path / "three", tmp_path / "three.beton", console=Q)
    with pytest.raises(FastvipError, match="class lists differ"):
        run(_recipe(colour_data, val_data=str(tmp_path / "three.beton")), tmp_path / "r", console=Q)


def test_schedule_warmup_then_cosine():
    from fastvip.train.schedule import lr_at
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 1e-3


def test_resolution_schedule_ramps_like_ffcv():
    from fastvip.recipe import Recipe
    from fastvip.train.schedule import max_train_resolution, train_resolution
    from fastvip.train.schedule import resolution_at
    sizes = [resolution_at(e, 160, 192, 2, 6) for e in range(9)]
    # flat at the start size, rounded to 32 in the ramp (168 -> 160, 176 -> 192), then the end size
    assert sizes == [160, 160, 160, 160, 192, 192, 192, 192, 192]
    assert [resolution_at(e, 32, 64, 0, 4, 8) for e in range(5)] == [32, 40, 48, 56, 64]
    assert resolution_at(10, 40, 64, 0, 0, 32) == 64 and [resolution_at(e, 64, 48, 0, 2, 8) for e in range(3)] == [64, 56, 48]
    r = Recipe(image_size=64, res_start=32, res_ramp_end=4, res_multiple=8)
    assert [train_resolution(r, e) for e in range(6)] == [32, 40, 48, 56, 64, 64]
    assert train_resolution(Recipe(image_size=64), 0) == 64 == max_train_resolution(r)
    with pytest.raises(FastvipError, match="res_ramp_start"):
        Recipe(res_start=32, res_ramp_start=5, res_ramp_end=2).validate()


def test_ema_tracks_with_warmup():
    from fastvip.train.ema import EMA
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.bias.fill_(0.0)
    before = ema.module.weight.clone()
    ema.update(m, step=0)
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5)
    assert EMA(m, 0.999).decay_at(0) == pytest.approx(0.1)


def test_compile_trains_like_eager(colour_data, tmp_path, monkeypatch):
    """compile=true sends the model through torch.compile (dynamo + AOTAutograd here: the
    inductor backend's C++ codegen costs a minute on two cores, and it is torch's part) and
    trains the same as eager."""
    import torch._dynamo
    real_compile, calls = torch.compile, []

    def compile_aot_eager(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses = {}
    for compiled in (False, True):
        run(_recipe(colour_data, epochs=1, compile=compiled), tmp_path / str(compiled), console=Q)
        line = _metrics(tmp_path / str(compiled))[1]
        losses[compiled] = (line["train_loss"], line["val_top1"])
        if not compiled:
            assert not calls and not torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert len(calls) == 1 and torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-4)
    assert losses[True][1] == losses[False][1]
