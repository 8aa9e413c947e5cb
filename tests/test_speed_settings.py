"""Model-step settings: channels-last per model from a measured table, the optimiser's
implementation, and the timm train.py reference step the throughput benchmark compares with."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from fastvip.errors import FastvipError
from fastvip.methods.model import measured_formats, use_channels_last
from fastvip.recipe import Recipe, parse_overrides
from fastvip.train import StepContext, build_optimizer, optimizer_impl, prepare_batch

sys.path.insert(0, str(REPO / "benchmarks"))
import throughput  # noqa: E402

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only as a key: nothing here allocates on it


def _entry(nchw, cl, chosen):
    return {"nchw_img_per_s": nchw, "channels_last_img_per_s": cl, "channels_last": chosen}


def test_channels_last_switch_spellings():
    assert Recipe().channels_last == "auto"
    assert Recipe(channels_last=True).channels_last == "on" and Recipe(channels_last=False).channels_last == "off"
    for text, want in [("true", "on"), ("no", "off"), ("on", "on"), ("auto", "auto")]:
        assert dataclasses.replace(Recipe(), **parse_overrides([f"channels_last={text}"])).channels_last == want
    with pytest.raises(FastvipError, match="channels_last must be one of auto, on, off"):
        Recipe(channels_last="sideways").validate()


def test_auto_channels_last_follows_the_measured_table(tmp_path):
    table = {"cpu": {"models": {"resnet18": _entry(100.0, 150.0, True), "tresnet_m": _entry(100.0, 40.0, False)}},
             "cuda": {"models": {"resnet18": _entry(100.0, 90.0, False)}}}
    on, why = use_channels_last(Recipe(model="resnet18"), CPU, table)
    assert on is True and "1.50x" in why
    assert use_channels_last(Recipe(model="resnet18"), CUDA, table)[0] is False  # per device type
    assert use_channels_last(Recipe(model="tresnet_m"), CPU, table)[0] is False
    off, why = use_channels_last(Recipe(model="resnet50"), CPU, table)  # not measured: NCHW
    assert off is False and "not measured" in why
    assert use_channels_last(Recipe(model="resnet18", channels_last="off"), CPU, table)[0] is False
    assert use_channels_last(Recipe(model="resnet50", channels_last="on"), CPU, table)[0] is True
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(FastvipError, match="unreadable"):
        measured_formats(bad)
    assert measured_formats(tmp_path / "missing.json") == {}


def test_shipped_table_is_consistent():
    """Every recorded choice follows from its own figures and margin."""
    table = measured_formats()
    for device, section in table.items():
        for model, e in section["models"].items():
            faster = e["channels_last_img_per_s"] > e["nchw_img_per_s"] * (1 + e["margin"])
            assert e["channels_last"] == faster, (device, model)


def test_prepare_batch_uses_the_resolved_format():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    for cl in (False, True):
        # the recipe says "on" both times: the resolved flag in the context decides
        ctx = StepContext(Recipe(channels_last="on"), CPU, None, 4, channels_last=cl)
        x, _, _ = prepare_batch(images, labels, ctx, step=0)
        assert x.is_contiguous(memory_format=torch.channels_last) == cl
        assert x.is_contiguous() == (not cl)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsproptf"])
def test_optimizer_impl(optimizer):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    for impl, want in [("foreach", {"foreach": True}), ("loop", {"foreach": False})] + \
            ([("fused", {"fused": True})] if optimizer != "rmsproptf" else []):
        opt = build_optimizer(model, Recipe(optimizer=optimizer, optimizer_impl=impl), CPU)
        assert {k: opt.defaults.get(k) for k in want} == want, impl
    want = "foreach" if optimizer == "rmsproptf" else "fused"
    assert optimizer_impl(Recipe(optimizer=optimizer), CUDA) == want
    if optimizer == "rmsproptf":
        with pytest.raises(FastvipError, match="no fused rmsproptf"):
            Recipe(optimizer=optimizer, optimizer_impl="fused").validate()


def test_opt_eps_reaches_the_optimiser():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert build_optimizer(model, Recipe(optimizer="rmsproptf", opt_eps=1e-3), CPU).defaults["eps"] == 1e-3
    assert build_optimizer(model, Recipe(optimizer="adamw", opt_eps=1e-6), CPU).defaults["eps"] == 1e-6
    assert build_optimizer(model, Recipe(optimizer="rmsproptf"), CPU).defaults["eps"] == 1e-10  # unset: timm's own


def test_rmsproptf_without_foreach_argument(monkeypatch):
    """timm releases whose RMSpropTF takes no ``foreach``: auto leaves it out, an explicit choice is refused."""
    import fastvip.train.optim as optim_mod

    class OldRMSpropTF(torch.optim.Optimizer):
        def __init__(self, params, lr=0.01, alpha=0.9, eps=1e-10, weight_decay=0, momentum=0.0):
            super().__init__(params, {"lr": lr})
    assert optimizer_impl(Recipe(optimizer="rmsproptf"), CUDA) == "foreach"  # this timm takes it
    monkeypatch.setattr(optim_mod, "optimizer_class", lambda name: OldRMSpropTF)
    assert optimizer_impl(Recipe(optimizer="rmsproptf"), CUDA) == "default"
    with pytest.raises(FastvipError, match="optimizer_impl=foreach: OldRMSpropTF of timm .* has no foreach"):
        build_optimizer(torch.nn.Linear(2, 2), Recipe(optimizer="rmsproptf", optimizer_impl="foreach"), CPU)


def test_timm_reference_step_is_the_same_computation():
    """fastvip's plain step and timm's train.py step, same seed and batch: same weights after
    two steps, so the benchmark's x_timm compares equal work."""
    recipe = throughput.plain(Recipe(model="test_resnet", image_size=32, batch_size=8, lr=0.2, momentum=0.9,
                                     weight_decay=1e-3, label_smoothing=0.1, auto_augment="autoaugment",
                                     mix_prob=1.0, channels_last="off", device="cpu"))
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (8,), generator=gen)
    torch.manual_seed(0)
    ours = throughput.training_step(recipe, CPU, 10)
    torch.manual_seed(0)
    timms = throughput.timm_train_step(recipe, CPU, 10)
    theirs = timms.model.state_dict()
    start = {k.removeprefix("backbone."): v.clone() for k, v in ours.model.state_dict().items()}
    assert all(torch.equal(start[k], theirs[k]) for k in theirs)
    for _ in range(2):
        ours(images, labels)
        timms(images, labels)
    after = {k.removeprefix("backbone."): v for k, v in ours.model.state_dict().items()}
    moved = [k for k in theirs if theirs[k].is_floating_point() and not torch.equal(theirs[k], start[k])]
    assert len(moved) > 10
    for k in theirs:
        torch.testing.assert_close(after[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)
    # a different lr is a different computation, and the comparison sees it
    torch.manual_seed(0)
    other = throughput.training_step(dataclasses.replace(recipe, lr=0.4), CPU, 10)
    for _ in range(2):
        other(images, labels)
    assert not all(torch.allclose(other.model.state_dict()[f"backbone.{k}"], theirs[k], rtol=1e-4, atol=1e-5)
                   for k in moved)


def test_memory_format_benchmark_records_choices(tmp_path, cpu_env):
    table = tmp_path / "formats.json"
    table.write_text(json.dumps({"cuda": {"models": {"resnet50": _entry(10.0, 20.0, True)}}}))
    p = subprocess.run([sys.executable, "benchmarks/memory_format.py", "--models", "test_resnet,test_efficientnet",
                        "--res", "32", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu",
                        "--table", table], cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    saved = json.loads(table.read_text())
    assert saved["cuda"]["models"]["resnet50"]["channels_last"] is True  # other devices kept
    for model in ("test_resnet", "test_efficientnet"):
        e = saved["cpu"]["models"][model]
        assert e["res"] == 32 and e["batch_size"] == 4 and e["amp"] == "off"
        assert e["nchw_img_per_s"] > 0 and e["channels_last_img_per_s"] > 0
        assert e["channels_last"] == (e["channels_last_img_per_s"] > e["nchw_img_per_s"] * (1 + e["margin"]))
        assert use_channels_last(Recipe(model=model), CPU, saved)[0] == e["channels_last"]
        assert f"{model}: channels-last" in p.stdout
    p = subprocess.run([sys.executable, "benchmarks/memory_format.py", "--models", "test_resnet", "--device", "cpu",
                        "--set", "no_such_field=1", "--table", table], cwd=REPO, env=cpu_env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "no_such_field" in p.stderr


def test_vary_times_one_field_in_alternation(tmp_path, capsys):
    out = tmp_path / "v.json"
    common = ["--mode", "model", "--loader", "", "--model", "test_resnet", "--res", "32", "--batch-size", "4",
              "--steps", "1", "--warmup", "1", "--device", "cpu"]
    assert throughput.main(common + ["--vary", "optimizer_impl=loop,fused", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["step"], r["optimizer_impl"]) for r in rows] == [("optimizer_impl=loop", "loop"),
                                                                 ("optimizer_impl=fused", "fused")]
    assert all(r["img_per_s"] > 0 and r["passes"] == 3 and r["model"] == "test_resnet" for r in rows)
    for bad, message in [("optimizer_impl=loop", "at least two values"), ("optimiser_impl=loop,fused", "optimizer_impl"),
                         ("channels_last=on,sideways", "channels_last must be one of")]:
        capsys.readouterr()
        assert throughput.main(common + ["--vary", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (bad, err)
