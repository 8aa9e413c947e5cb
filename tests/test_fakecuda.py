"""The CUDA path on a CPU: the real step, validation and predict on fake CUDA tensors.

``tests/helpers/fakecuda.py`` runs them under torch's ``FakeTensorMode`` with a dispatch mode
that records every host sync (``.item()``, copies to the host, data-dependent shapes,
blocking uploads), refuses CPU/CUDA mixes, checks the fused optimiser kernels' own
conditions and keeps autocast on. Marked ``fakecuda`` (``pytest -m fakecuda``); they run in CI
on every machine. What they cannot prove (kernel speed, a real backward's ops, NCCL, the
loaders' own copies) stays with ``tests/test_cuda.py`` and ``tools/gpu_check.sh``.

The claim: after the first step (which creates optimiser state and device constants), a
training step makes **no host sync**, and validation and predict make at most one per batch.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.fakecuda import CUDA, DeviceMix, FusedHazard, explain, fake_cuda

import fastvip.loaders.resident as resident_loader  # imports FFCV (seconds): at collection, not in a test
from fastvip.evaluate import evaluate
from fastvip.loaders import build_loader
from fastvip.model import build_model, save_checkpoint
from fastvip.recipe import Recipe
from fastvip.errors import FastvipError
from fastvip.train import build_trainer, skips_on_device, train_step

pytestmark = pytest.mark.fakecuda
CLASSES = 4


@pytest.fixture
def fc(monkeypatch):
    """Fake CUDA for one test; device constants cached by fastvip start empty and are dropped after."""
    import fastvip.methods.augment as augment
    monkeypatch.setattr(augment, "_CONSTANTS", {})
    with fake_cuda() as rec:
        yield rec


def _recipe(**kw) -> Recipe:
    base = dict(model="test_resnet", image_size=16, batch_size=8, lr=0.1, device="cuda", amp="bf16",
                label_smoothing=0.1)
    return Recipe(**{**base, **kw}).validate()


def _batches(recipe: Recipe, n: int) -> list:
    """``n`` uint8 batches made on the device (no upload), channels-last as the loaders deliver them."""
    rows = recipe.batch_size * recipe.views
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (rows, 3, recipe.image_size, recipe.image_size), dtype=torch.uint8,
                               device=CUDA).contiguous(memory_format=torch.channels_last)
        labels = (torch.arange(recipe.batch_size, device=CUDA) % CLASSES).repeat(recipe.views)
        out.append((images, labels))
    return out


def _steps(fc, trainer, batches, start: int = 0) -> tuple[list, list]:
    """One train step per batch (and the EMA update, as ``fastvip run`` does); returns the terms
    and the host syncs of each step."""
    terms, syncs = [], []
    for step, batch in enumerate(batches, start):
        with fc.watch(f"step {step}") as found:
            out = train_step(trainer.forward, trainer.optimizer, trainer.scaler, [batch], trainer.ctx, step)
            assert out is not None, f"step {step} was skipped"
            bad = out.pop("nonfinite", None)
            if trainer.ema is not None:
                trainer.ema.update(trainer.model, step, skip=bad)
        terms.append(out)
        syncs.append(found)
    return terms, syncs


def _steady(syncs: list) -> None:
    """No host sync in any step after the first."""
    later = [s for step in syncs[1:] for s in step]
    assert not later, "host syncs in steady-state steps:\n" + explain(later)


def _hook_first_conv(model) -> dict:
    seen = {}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    return seen


STEP_CASES = {
    # the step of tests/test_cuda.py's sync check: fused SGD, found_inf on the device, no host read
    "bf16-fused-sgd-channels-last-autoaugment-erasing-cutmix": dict(
        recipe=dict(amp="bf16", channels_last="on", optimizer="sgd", auto_augment="autoaugment",
                    random_erasing=0.25, mix_prob=1.0, cutmix_alpha=1.0), fused="_fused_sgd_", steps=3),
    "bf16-fused-adamw-mixup-randaugment": dict(
        recipe=dict(amp="bf16", channels_last="on", optimizer="adamw", mix_prob=1.0, cutmix_alpha=0.0,
                    mixup_alpha=0.2, auto_augment="randaugment"), fused="_fused_adamw_"),
    # fp16: the loss's NaN flag joins GradScaler's found_inf, which the fused kernel reads on the device
    "fp16-gradscaler-fused-adamw": dict(
        recipe=dict(amp="fp16", channels_last="off", optimizer="adamw"), fused="_fused_adamw_"),
    # no fused kernel: the step is taken and undone on the device (train.step.masked_step)
    "bf16-rmsproptf-foreach": dict(
        recipe=dict(amp="bf16", channels_last="on", optimizer="rmsproptf", random_erasing=0.5), fused=None),
    # the first step an optimiser without a fused kernel takes is decided on the host (it creates
    # the state); the harness reads GradScaler's found_inf as 1, so that step is primed here
    "fp16-gradscaler-rmsproptf-foreach": dict(
        recipe=dict(amp="fp16", channels_last="on", optimizer="rmsproptf"), fused=None, steps=3, prime=True),
}


@pytest.mark.parametrize("name", list(STEP_CASES))
def test_steady_state_train_step_makes_no_host_sync(fc, name):
    case = STEP_CASES[name]
    recipe = _recipe(**case["recipe"])
    t = build_trainer(recipe, CUDA, CLASSES)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}[recipe.amp]
    assert t.amp == amp and t.ctx.amp == amp
    assert t.ctx.skip_on_device and skips_on_device(recipe, CUDA, amp)  # on CUDA, whatever the optimiser
    assert t.ctx.generator.device == CUDA  # the step's generator lives on the batch's indexed device
    assert t.scaler.is_enabled() == (amp == torch.float16)
    assert next(t.model.parameters()).device == CUDA
    seen = _hook_first_conv(t.model)
    steps = case.get("steps", 2)
    if case.get("prime"):
        with fc.watch("prime"):
            for p in t.model.parameters():
                p.grad = torch.zeros_like(p)
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
        assert t.optimizer.state
    _, syncs = _steps(fc, t, _batches(recipe, steps))

    assert seen["out"].dtype == amp  # autocast ran the convolutions in the recipe's precision
    assert seen["x"].is_contiguous(memory_format=torch.channels_last) == (recipe.channels_last == "on")
    assert fc.backwards == steps
    if case["fused"]:
        assert t.optimizer.defaults.get("fused") and set(fc.fused) == {case["fused"]}
        # the last step's kernel gets found_inf: from the loss, and with fp16 joined to GradScaler's
        # overflow check after its unscale_ (the kernel then has no grad_scale left to apply)
        assert fc.fused_inputs[-1] == {"found_inf"}
    else:
        assert t.optimizer.defaults.get("foreach") and not fc.fused
    if recipe.channels_last == "on":
        conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert conv.weight.grad.stride() == conv.weight.stride()
    _steady(syncs)


def test_fp16_fused_sgd_first_step_cannot_leave_momentum_uninitialised(fc):
    """fp16 + fused SGD: the first step hands GradScaler's found_inf to the fused kernel, and an
    overflowing first step (GradScaler's initial scale often overflows) is skipped by it. Momentum
    buffers it made itself (``empty_like``) would stay unset for good: the harness raises
    :class:`FusedHazard` then. They are zeros made before the first step instead."""
    recipe = _recipe(amp="fp16", optimizer="sgd")
    t = build_trainer(recipe, CUDA, CLASSES)
    _steps(fc, t, _batches(recipe, 1))
    assert all("momentum_buffer" in t.optimizer.state[p] for p in t.model.parameters())


def test_two_view_pk_batches_from_the_resident_loader_mean_teacher_triplet_cr(fc, resident):
    """P x K two-view batches cut on the device by the resident loader, fed to the step with
    EMA, Mean Teacher (the teacher on the other view), batch-hard triplet and CR."""
    recipe = _recipe(channels_last="on", optimizer="sgd", batch_size=4, views=2, pk_samples=2, ema=True, ema_decay=0.9,
                     mt_weight=1.0, triplet_weight=1.0, cr_weight=0.5, mix_prob=1.0, cutmix_alpha=1.0)
    loader = build_loader("resident", resident, train=True, batch_size=recipe.batch_size, image_size=16,
                          device=CUDA, seed=3, workers=1, views=2, pk=recipe.pk_samples)
    assert loader.store["where"] == "cuda:0" and loader.store_tensor.device == CUDA
    t = build_trainer(recipe, CUDA, CLASSES)
    assert t.ctx.teacher is t.ema.module and not t.ctx.teacher.training
    batches = _epochs(loader)
    terms, syncs = [], []
    for step in range(2):
        with fc.watch(f"step {step}") as found:
            images, labels = next(batches)  # the loader's per-batch crop and resize are in the step
            assert images.device == CUDA and images.dtype == torch.uint8 and images.shape == (8, 3, 16, 16)
            assert images.is_contiguous(memory_format=torch.channels_last) and labels.device == CUDA
            out = train_step(t.forward, t.optimizer, t.scaler, [(images, labels)], t.ctx, step)
            t.ema.update(t.model, step, skip=out.pop("nonfinite", None))
        terms.append(out)
        syncs.append(found)
    assert {"loss_ce", "loss_mt", "loss_triplet", "loss_cr", "train_loss"} <= terms[-1].keys()
    _steady(syncs)


def test_arcface_sce_aux_heads_then_validation(fc, resident):
    """ArcFace, symmetric CE and the auxiliary head (fused into the eval output) through the step;
    then validation of the EMA weights on the resident eval loader: one sync per evaluation."""
    recipe = _recipe(channels_last="on", optimizer="adamw", arcface=True, loss="sce", aux_weight=0.4,
                     fusion_weight=0.3, ema=True, ema_decay=0.9)
    t = build_trainer(recipe, CUDA, CLASSES)
    terms, syncs = _steps(fc, t, _batches(recipe, 2))
    assert {"loss_sce", "loss_arcface", "loss_aux"} <= terms[-1].keys()
    _steady(syncs)

    val = build_loader("resident", resident, train=False, batch_size=8, image_size=16, device=CUDA, workers=1)
    with fc.watch("evaluation") as found:  # the EMA weights: the recipe's shipped ones
        scores = evaluate(t.ema.module, fc.batches(val), CUDA, t.amp, t.channels_last)
    assert scores["n"] > 0 and len(val) == 2
    per_batch = fc.per_phase(found)
    assert all(len(v) <= 1 for v in per_batch.values()), explain(found)
    assert len(found) == 1, explain(found)  # the counts are read once, after the last batch


@pytest.mark.parametrize("tta", ["flip", "multiscale"])
def test_predict_with_tta_makes_at_most_one_sync_per_batch(fc, resident, tmp_path, monkeypatch, tta):
    from fastvip.infer import predict as predict_mod
    recipe = _recipe(loader="resident", channels_last="on", tta_scales=(16, 20), eval_crop=0.8)
    with fc.watch("set-up"):
        ckpt = tmp_path / "w.pt"
        model = build_model(recipe, CLASSES)
        save_checkpoint(ckpt, {"model": model.state_dict(), "recipe": recipe.to_dict(),
                               "classes": [f"c{k}" for k in range(CLASSES)]})
    _canvas_loader(monkeypatch, fc)
    real_iter = resident_loader.ResidentLoader.__iter__
    monkeypatch.setattr(resident_loader.ResidentLoader, "__iter__", lambda self: fc.batches(real_iter(self)))
    with fc.watch("predict") as found:
        result = predict_mod.predict(ckpt, resident, tta=tta, batch_size=8, out=tmp_path / "p.npz",
                                     console=_quiet())
    assert result["n"] == RESIDENT_IMAGES and (tmp_path / "p.npz").is_file()
    per_batch = fc.per_phase(found, prefix="batch")
    assert len(per_batch) == RESIDENT_IMAGES // 8
    assert all(len(v) <= 1 for v in per_batch.values()), explain(found)
    # before the first batch: only the weights' upload (a sync after the last batch counts in it)
    assert all(s.kind == "upload" for s in found if not s.phase.startswith("batch")), explain(found)


# ------------------------------------------------------------------ the harness can fail

def _mix(x):
    return x + torch.ones(x.shape)  # a CPU tensor with the CUDA batch


INJECTED = {
    "item": (lambda x: x.sum().item(), "item"),
    "bool": (lambda x: bool((x > 0).any()), "item"),
    "tolist": (lambda x: x[:2].tolist(), "to-host"),
    "cpu": (lambda x: x.cpu(), "to-host"),
    "boolean-mask": (lambda x: x[x > 0], "data-shape"),
    "nonzero": (lambda x: torch.nonzero(x), "data-shape"),
    "blocking-upload": (lambda x: x + torch.tensor([1.0, 2.0]).to(x.device)[0], "upload"),
    "python-scalar-store": (lambda x: x.__setitem__((0, 0), 5.0), "upload"),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_the_harness_records_each_kind_of_host_sync(fc, name):
    fn, kind = INJECTED[name]
    x = torch.randn(4, 3, device=CUDA)
    with fc.watch("injected") as found:
        fn(x)
    assert [s.kind for s in found] == [kind], explain(found)
    assert "test_fakecuda.py" in found[0].where
    with fc.watch("clean") as found:
        torch.tensor([1.0, 2.0]).pin_memory().to(x.device, non_blocking=True)
        x[:, :2] = x[:, 1:] * 2
        torch.where(x > 0, x, torch.zeros((), device=CUDA)).sum(0)
    assert not found, explain(found)


@pytest.mark.parametrize("fault", ["cpu-operand", "cpu-index", "generator"])
def test_the_harness_refuses_device_mixes(fc, fault):
    x = torch.randn(4, 3, device=CUDA)
    with pytest.raises(DeviceMix):
        if fault == "cpu-operand":
            _mix(x)
        elif fault == "cpu-index":
            x[torch.tensor([0, 2])]
        else:
            torch.rand(3, generator=torch.Generator(CUDA))  # a CUDA generator for a CPU tensor
    x * torch.tensor(2.0)  # a 0-dim CPU tensor is a kernel argument, not a mix


def test_the_harness_applies_the_fused_kernels_checks(fc):
    p = torch.nn.Parameter(torch.randn(8, 4, 3, 3, device=CUDA).contiguous(memory_format=torch.channels_last))
    p.grad = torch.randn(8, 4, 3, 3, device=CUDA)  # contiguous: other strides than its parameter's
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True)
    with pytest.raises(RuntimeError, match="same sizes and strides"):
        opt.step()
    p.grad = torch.empty_like(p)
    opt.found_inf = torch.zeros((), device=CUDA)
    with pytest.raises(FusedHazard):  # a first step that may be skipped: momentum left as empty_like
        opt.step()
    del opt.found_inf
    opt.step()
    opt.found_inf = torch.zeros(2, device=CUDA)
    with pytest.raises(RuntimeError, match="one element"):
        opt.step()
    opt.found_inf = torch.zeros((), device=CUDA, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="float32"):
        opt.step()
    opt.found_inf = torch.zeros((), device=CUDA)
    opt.step()
    assert fc.fused[-1] == "_fused_sgd_" and fc.fused_inputs[-1] == {"found_inf"}


def test_a_sync_injected_into_the_step_is_caught(fc):
    """A read put back into the step (here: a progress print's ``float(loss)`` in a forward hook)
    fails the steady-state check, naming where it was made."""
    recipe = _recipe(optimizer="adamw")
    t = build_trainer(recipe, CUDA, CLASSES)

    def progress_print(module, args, out):
        float(out["logits"].detach().sum())

    t.model.register_forward_hook(progress_print)
    _, syncs = _steps(fc, t, _batches(recipe, 2))
    with pytest.raises(AssertionError, match="host syncs in steady-state steps") as failed:
        _steady(syncs)
    assert "test_fakecuda.py" in str(failed.value) and "item" in str(failed.value)


def test_the_harness_is_undone_after_the_test():
    real_generator = torch.Generator
    with fake_cuda():
        assert torch.cuda.is_available() and torch.Generator is not real_generator
    assert torch.Generator is real_generator and not torch.cuda.is_available()
    assert torch.Generator("cpu").device.type == "cpu"
    x = torch.ones(2, requires_grad=True)
    (x * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 2.0)) and torch.ones(2).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ data without a packed file

RESIDENT_IMAGES = 16


@pytest.fixture
def resident(tmp_path, monkeypatch):
    """A resident loader's file of 16 labelled images (4 per class, 18-30 px): its metadata comes from
    here and its decode leaves the store as allocated, so only the device path runs (packing and
    JPEG decoding would take longer than this whole file)."""
    res = resident_loader
    rng = np.random.default_rng(0)
    n = RESIDENT_IMAGES
    heights, widths = rng.integers(18, 31, n).astype(np.int64), rng.integers(18, 31, n).astype(np.int64)
    labels = np.arange(n, dtype=np.int64) % CLASSES
    path = tmp_path / "data.beton"
    path.write_bytes(bytes(64))
    packed = SimpleNamespace(path=path, classes=[f"c{k}" for k in range(CLASSES)], labelled=True, labels=labels,
                             ids=[f"img_{i}.JPEG" for i in range(n)], heights=heights, widths=widths, sidecar=True,
                             fields=("image", "label", "id"), num_samples=n, num_classes=CLASSES,
                             checksums=None)  # checksum checks have tests of their own
    records = SimpleNamespace(ptrs=np.zeros(n, np.int64), sizes=np.ones(n, np.int64), modes=np.zeros(n, np.int64),
                              heights=heights, widths=widths)
    monkeypatch.setattr(res, "open_packed", lambda p: packed)
    monkeypatch.setattr(res, "image_records", lambda p: records)
    monkeypatch.setattr(res, "_decode_into", lambda *args: None)
    return path


def _canvas_loader(monkeypatch, fc):
    """FFCV's canvas loader for ``predict --tta multiscale|tencrop``: whole images in the corner of a
    zero canvas, uint8 channels-last on the device, as FFCV's ``ToDevice(non_blocking=True)`` hands
    them over (FFCV's pipeline itself cannot run on a fake device)."""
    import fastvip.loaders.ffcv as ffcv_mod
    open_packed = resident_loader.open_packed  # the resident fixture's

    class CanvasLoader:
        def __init__(self, path, *, train, batch_size, image_size, device, workers=0, canvas=False, **kw):
            assert canvas and not train
            self.packed, self.batch_size, self.device = open_packed(path), batch_size, device
            self.num_samples = self.packed.num_samples

        def __len__(self):
            return -(-self.num_samples // self.batch_size)

        def __iter__(self):
            h, w = int(self.packed.heights.max()), int(self.packed.widths.max())
            labels = torch.from_numpy(self.packed.labels)
            for b in range(0, self.num_samples, self.batch_size):
                n = min(self.batch_size, self.num_samples - b)
                canvas = torch.zeros((n, h, w, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
                yield canvas, labels[b:b + n].pin_memory().to(self.device, non_blocking=True)

    real = CanvasLoader.__iter__
    monkeypatch.setattr(CanvasLoader, "__iter__", lambda self: fc.batches(real(self)))
    monkeypatch.setattr(ffcv_mod, "FFCVLoader", CanvasLoader)


def _epochs(loader):
    """The loader's batches, epoch after epoch (``set_epoch`` as ``fastvip run`` calls it)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _quiet():
    from fastvip.console import Console
    return Console(quiet=True)


def test_resident_fit_on_cuda_keeps_half_the_card_and_counts_pinned_rounding(fc, resident, monkeypatch):
    """The store goes on the GPU when it fits beside half the card kept for the model; else into
    pinned host memory, counted as PyTorch's pinned allocator holds it (rounded up to a power of
    two), and refused when that does not fit; the store's log fields say what was chosen and why."""
    from fastvip.loaders import resident as res
    GiB = 1 << 30

    def build():
        return build_loader("resident", resident, train=False, batch_size=4, image_size=16, device=CUDA, workers=1)
    on_gpu = build()
    assert on_gpu.store["where"] == "cuda:0" and "40 GB kept for the model" in on_gpu.store["why"]
    nbytes = on_gpu.store["bytes"]
    pinned = res.pinned_bytes(nbytes)
    assert pinned > nbytes and pinned & (pinned - 1) == 0 and res.pinned_bytes(pinned) == pinned
    # 40 GiB + a few bytes free on an 80 GiB card: the half kept leaves less than the store
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * GiB + nbytes // 2, 80 * GiB))
    host = build()
    assert host.store["where"] == "host (pinned)" and host.store["allocated"] == pinned
    assert "exceed the" in host.store["why"] and "the GPU allows" in host.store["why"]
    real = res._free_bytes
    monkeypatch.setattr(res, "_free_bytes", lambda d: (nbytes + (pinned - nbytes) // 2, 8 * GiB, "test margin")
                        if d.type == "cpu" else real(d))
    with pytest.raises(FastvipError, match="do not fit|need"):
        build()  # the bytes fit the host, their pinned block does not
