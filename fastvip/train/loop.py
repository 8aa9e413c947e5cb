"""``fastvip run``: the training loop.

One function, read top to bottom: set-up (or resume), then for each epoch the
train steps, validation (raw and EMA weights), an atomic checkpoint and one
``metrics.jsonl`` line. The learning rate is a pure function of the explicit
step counter (:func:`fastvip.train.schedule.lr_at`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastvip.loaders import build_loader, in_pipeline

from fastvip import atomic, distributed

from fastvip.methods import losses

from fastvip.train import tensorboard
from fastvip.train import metrics as metrics_log
from fastvip import recipe as recipe_mod
from fastvip.methods.augment import normalize
from fastvip.methods.autoaugment import augment_batch, random_erasing
from fastvip.console import Console
from fastvip.train.ema import EMA
from fastvip.errors import FastvipError
from fastvip.infer.evaluate import evaluate
from fastvip.methods.mix import apply_mix, dominant_labels, draw_mix
from fastvip.methods.model import (
    amp_dtype,
    amp_name,
    autocast,
    build_model,
    find_weights,
    inference_weights,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    use_channels_last,
)
from fastvip.methods.net import adapt_init_weights
from fastvip.data.pack import check_label_indices, merge, merged_path
from fastvip.methods.objective import loss_terms
from fastvip.recipe import Recipe
from fastvip.train.runlock import RunLock
from fastvip.train.stop import RunStopped, Stopper
from fastvip.train.schedule import lr_at, max_train_resolution, train_resolution


def run(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, console: Console | None = None,
        stop_after: int | None = None) -> dict:
    """Train ``recipe`` into ``run_dir``; returns the run summary.

    Under torchrun every process calls this; process 0 writes the run directory.
    ``stop_after`` ends the run after that many epochs (the schedule still spans
    ``recipe.epochs``), as if it had been interrupted there.
    """
    ddp, device = distributed.setup(resolve_device(recipe.device))
    try:
        _check_setting(recipe, ddp, device)
        with contextlib.ExitStack() as hold:
            if ddp.main:  # one writer per run directory, before anything in it is written
                hold.enter_context(RunLock(Path(run_dir)))
            return _run(recipe, Path(run_dir), resume, console or Console(), stop_after, ddp, device)
    finally:
        distributed.teardown()


def _stores(train_loader, val_loader) -> dict | None:
    """Where a resident loader keeps each split's pixels (None for loaders that decode per epoch)."""
    out = {name: ld.store for name, ld in (("train", train_loader), ("val", val_loader))
           if getattr(ld, "store", None)}
    return out or None


def _run(recipe: Recipe, run_dir: Path, resume: bool, console: Console, stop_after: int | None,
         ddp: distributed.Dist, device: torch.device) -> dict:
    if not ddp.main:
        console = Console(quiet=True)
    ckpt = _open_run_dir(run_dir, recipe, resume, console, write=ddp.main)
    distributed.barrier()

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed % 2**32)
    random.seed(recipe.seed)

    files = recipe.train_files
    if not files:
        raise FastvipError("recipe.train_data is empty; name a packed file (fastvip pack)")
    if len(files) > 1:  # train+val merged, as both reports train their final models
        if ddp.main:
            merge(files, console=console)
        distributed.barrier()
        files = [os.fspath(merged_path(files))]
    common = {"device": device, "seed": recipe.seed, "workers": recipe.workers,
              "eval_crop": recipe.eval_crop, "crop_scale": (recipe.crop_scale_min, 1.0),
              "resident_size": recipe.resident_size, "console": console}
    train_loader = build_loader(recipe.loader, files[0], train=True, batch_size=recipe.batch_size // recipe.grad_accum,
                                image_size=max_train_resolution(recipe), auto_augment=recipe.auto_augment,
                                views=recipe.views, pk=recipe.pk_samples, **common)
    classes = train_loader.classes
    if not classes:
        raise FastvipError(f"{files[0]} is unlabelled; training needs class folders")
    steps_per_epoch = len(train_loader) // recipe.grad_accum
    if steps_per_epoch == 0:
        raise FastvipError(f"batch_size {recipe.batch_size} is larger than the {train_loader.packed.num_samples} "
                           f"training images (the last partial batch is dropped)")
    val_loader = None
    if recipe.val_data:
        val_loader = build_loader(recipe.loader, recipe.val_data, train=False,
                                  batch_size=max(1, recipe.batch_size // ddp.world),
                                  image_size=recipe_mod.eval_resolution(recipe), **common)
        if not val_loader.packed.sidecar:  # written by FFCV's own tools: its labels index the classes
            check_label_indices(val_loader.packed, classes, files[0])
        elif val_loader.classes != classes:
            raise FastvipError(f"class lists differ: {files[0]} has {len(classes)} classes, "
                               f"{recipe.val_data} has {len(val_loader.classes)}")

    parts = build_trainer(recipe, device, len(classes), console, fresh=ckpt is None, world=ddp.world)
    model, optimizer, scaler, ema = parts.model, parts.optimizer, parts.scaler, parts.ema
    amp, channels_last = parts.amp, parts.channels_last
    step, start_epoch, best = 0, 0, {"top1": None, "epoch": None, "weights": None}
    shipped = recipe.shipped_weights()
    last = {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        step, start_epoch, best = ckpt["step"], ckpt["epoch"], ckpt["best"]
        last = ckpt.get("last", {})  # absent in checkpoints of older versions
        _set_rng_state(ckpt["rng"])
    wrapped = model
    if ddp.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    forward = torch.compile(wrapped) if recipe.compile else wrapped
    ctx = StepContext(recipe, device, amp, len(classes), in_pipeline(train_loader), channels_last,
                      rank=ddp.rank, world=ddp.world,
                      teacher=ema.module if recipe.mt_weight > 0 else None,
                      no_sync=wrapped.no_sync if ddp.world > 1 else None,
                      skip_on_device=skips_on_device(recipe, device, amp))

    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)
    rampup_steps = round(recipe.mt_rampup_epochs * steps_per_epoch)
    peak_lr = recipe.scaled_lr()
    metrics = run_dir / "metrics.jsonl"
    board = tensorboard.open_board(recipe, run_dir, step, ddp.main)
    if ddp.main:
        metrics_log.append(metrics, {
            "event": "start", "time": time.time(), "loader": recipe.loader, "world_size": ddp.world,
            "device": str(device), "model": recipe.model, "resumed_from_epoch": start_epoch if ckpt else None,
            "num_classes": len(classes), "num_train": train_loader.num_samples * ddp.world,
            "num_val": val_loader.packed.num_samples if val_loader else 0, "batch_size": recipe.batch_size,
            "grad_accum": recipe.grad_accum, "views": recipe.views, "eval_size": recipe_mod.eval_resolution(recipe),
            "peak_lr": peak_lr, "amp": amp_name(amp),
            "channels_last": channels_last, "optimizer_impl": optimizer_impl(recipe, device),
            "os_cache": getattr(train_loader, "os_cache", None), "store": _stores(train_loader, val_loader)})
    console.log(f"run: {recipe.model} on {device}" + (f" x {ddp.world} processes" if ddp.world > 1 else "")
                + f", {train_loader.num_samples * ddp.world} train images, {len(classes)} classes, "
                f"{steps_per_epoch} steps/epoch, loader {recipe.loader}"
                + (f", resumed after epoch {start_epoch}" if ckpt else ""))
    for name, st in (_stores(train_loader, val_loader) or {}).items():
        console.log(f"run: {name} images resident in {st['where']}: {st['bytes'] / 2**20:,.1f} MiB "
                    f"({st['images']} images, longest side {st['resident_size']} px)")
    console.log(f"run: channels-last {'on' if channels_last else 'off'} ({parts.channels_last_why}), "
                f"optimizer {recipe.optimizer} ({optimizer_impl(recipe, device)})")

    t_run = time.perf_counter()
    rates, nonfinite = [], 0
    images_per_step = recipe.batch_size * recipe.views

    def state(epoch_done: int, mid_epoch: dict | None = None) -> dict:
        """Everything --resume needs, after ``epoch_done`` whole epochs (and ``mid_epoch`` of the next)."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema else None, "step": step, "epoch": epoch_done, "best": best,
                "last": last, "rng": _rng_state(), "recipe": recipe.to_dict(), "classes": classes,
                "mid_epoch": mid_epoch,
                # last.pt recommends the declared weights; best.pt the val-selected ones
                "inference": (ema.module if shipped == "ema" else model).state_dict(), "weights": shipped}

    stopper = Stopper(recipe.checkpoint_minutes, ddp.world, device)
    mid = ckpt.get("mid_epoch") if ckpt else None  # resumed inside an epoch: skip its first steps
    try:
        for epoch in range(start_epoch, recipe.epochs):
            size = train_resolution(recipe, epoch)  # progressive resizing: a function of the epoch
            first = mid["steps"] if mid else 0
            train_loader.set_epoch(epoch, image_size=size, start_batch=first * recipe.grad_accum)
            model.train()
            sums = {k: torch.tensor(v, device=device) for k, v in mid["sums"].items()} if mid else {}
            done, skipped = (mid["done"], mid["skipped"]) if mid else (0, 0)
            t0 = time.perf_counter() - (mid["seconds"] if mid else 0.0)
            mid = None
            unread = []  # device-side skip flags (train_step with skip_on_device), read at intervals

            def count_skipped() -> None:
                nonlocal done, skipped, nonfinite
                if not unread:
                    return
                n_bad = int(torch.stack(unread).sum().item())
                unread.clear()
                done, skipped, nonfinite = done - n_bad, skipped + n_bad, nonfinite + n_bad
                if nonfinite > recipe.max_nonfinite_steps:
                    raise FastvipError(
                        f"loss was NaN/inf in {nonfinite} steps (max_nonfinite_steps="
                        f"{recipe.max_nonfinite_steps}); stopped in epoch {epoch + 1}, {_last_good(run_dir)}")
            with console.progress(f"epoch {epoch + 1}/{recipe.epochs}", steps_per_epoch * images_per_step) as bar:
                batches = iter(train_loader)
                for i in range(first, steps_per_epoch):
                    action = stopper.poll(step) if i > first else None
                    if action is not None:  # a step boundary inside the epoch: i steps done
                        count_skipped()
                        # the loss sums so far, averaged over processes: each resumes from the mean
                        partial = _epoch_means(sums, 1, ddp.world, device) if sums else {}
                        if ddp.main:
                            save_checkpoint(run_dir / "last.pt", state(epoch, {
                                "steps": i, "done": done, "skipped": skipped, "sums": partial,
                                "seconds": time.perf_counter() - t0}))
                        if action == "stop":
                            _stop(stopper, epoch, step, metrics if ddp.main else None)
                    lr = lr_at(step, total_steps, warmup_steps, peak_lr, recipe.warmup_lr, recipe.min_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    # micro-batches are fetched one at a time: a loader may reuse a batch's buffer
                    # once the next one is fetched, so none is held across a fetch
                    micro = itertools.islice(batches, recipe.grad_accum)
                    terms = train_step(forward, optimizer, scaler, micro, ctx, step, n=recipe.grad_accum,
                                       mt_ramp=losses.rampup(step, rampup_steps))
                    step += 1
                    if terms is None:
                        unread.append(torch.ones((), device=device))
                        done += 1
                        count_skipped()
                        continue
                    bad = terms.pop("nonfinite", None)
                    if bad is not None:
                        unread.append(bad)
                    if ema is not None:
                        ema.update(model, step - 1, skip=bad)
                    for name, value in terms.items():
                        sums[name] = sums.get(name, 0.0) + value.detach()
                    done += 1
                    if step % 10 == 0 or i + 1 == steps_per_epoch:
                        count_skipped()
                        loss = terms["train_loss"].item()
                        bar.advance((i + 1) * images_per_step - bar.done, step=step,
                                    loss=f"{loss:.3f}", lr=f"{lr:.4g}")
                        board.step(step, loss, lr)
                for _ in batches:  # fewer than grad_accum left over: let the loader finish its epoch
                    pass
                count_skipped()
            train_time = time.perf_counter() - t0
            rates.append(done * images_per_step / train_time)
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise FastvipError(f"weights became NaN/inf in epoch {epoch + 1} (lower lr?); {_last_good(run_dir)}")

            with stopper.busy():  # a stop asked for now waits for the epoch's checkpoint
                line = {"event": "epoch", "epoch": epoch + 1, "image_size": size}
                line.update(_epoch_means(sums, done, ddp.world, device))
                line["nonfinite_steps"] = skipped
                if ddp.world > 1:
                    line["weights_in_sync"] = _weights_in_sync(model, device)
                    if not line["weights_in_sync"]:
                        raise FastvipError(f"the processes' weights differ after epoch {epoch + 1} (DDP out of sync)")
                scores = {}
                if val_loader is not None and recipe_mod.validates(recipe, epoch):
                    scores = _validate(model, ema, val_loader, device, amp, channels_last)
                    line.update(_val_fields(scores))
                line.update(lr=lr, img_per_s=rates[-1] * ddp.world, epoch_time_s=time.perf_counter() - t0,
                            time=time.time())  # wall clock: benchmarks place each epoch on a time axis

                weights = max(scores, key=lambda k: scores[k]["top1"]) if scores else shipped
                top1 = scores[weights]["top1"] if scores else None
                improved = best["top1"] is None or (top1 is not None and top1 > best["top1"])
                if improved:
                    best = {"top1": top1, "epoch": epoch + 1, "weights": weights}
                # the figure to report: the declared weights at the latest validated epoch, no choice made on val
                if scores or val_loader is None:
                    last = _last_scores(scores, shipped, epoch + 1)
                if epoch + 1 == recipe.epochs:
                    line.update(last_top1=last["last_top1"], last_weights=shipped)
                if ddp.main:
                    if improved:
                        save_checkpoint(run_dir / "best.pt", {
                            "inference": (ema.module if weights == "ema" else model).state_dict(), "weights": weights,
                            "epoch": epoch + 1, "recipe": recipe.to_dict(), "classes": classes})
                    atomic.write_json(run_dir / "best.json", {**best, **last})
                    save_checkpoint(run_dir / "last.pt", state(epoch + 1))
                    metrics_log.append(metrics, line)
                    board.epoch(line)
            console.log(_epoch_text(line, recipe.epochs))
            if stopper.poll(step) == "stop" and epoch + 1 < recipe.epochs:  # the epoch's checkpoint stands
                _stop(stopper, epoch + 1, step, metrics if ddp.main else None)
            if stop_after is not None and epoch + 1 >= stop_after:
                break
    except RunStopped as stopped:
        board.close()
        console.log(f"run: {stopped}; checkpoint {run_dir / 'last.pt'}, continue with --resume")
        raise
    finally:
        stopper.close()

    board.close()
    distributed.barrier()
    if ddp.main:
        _write_plots(run_dir, console)
    summary = {"last_top1": last.get("last_top1"), "last_weights": last.get("last_weights"),
               "last_epoch": last.get("last_epoch"), "last_top1_raw": last.get("last_top1_raw"),
               "last_top1_ema": last.get("last_top1_ema"),
               "best_top1": best["top1"], "best_epoch": best["epoch"], "best_weights": best["weights"],
               "wall_time_s": time.perf_counter() - t_run,
               "img_per_s": float(np.median(rates)) * ddp.world if rates else None,
               "world_size": ddp.world, "run_dir": os.fspath(run_dir)}
    console.table("run summary", [(k, _fmt(v)) for k, v in summary.items()])
    return summary


@dataclass
class Trainer:
    """The model and what updates it, as :func:`build_trainer` makes them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    amp: torch.dtype | None
    channels_last: bool
    channels_last_why: str


def build_trainer(recipe: Recipe, device: torch.device, num_classes: int, console: Console | None = None,
                  fresh: bool = True, world: int = 1) -> Trainer:
    """A fresh model in the recipe's memory format, its optimiser, grad scaler and EMA:
    the set-up ``fastvip run`` and ``benchmarks/throughput.py`` share. ``fresh`` (no
    checkpoint to resume) loads ``recipe.init_from``; ``world`` > 1 converts to SyncBatchNorm
    where the recipe asks for it."""
    amp = amp_dtype(recipe.amp, device)
    channels_last, why = use_channels_last(recipe, device)
    model = build_model(recipe, num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.init_from and fresh:
        _init_weights(model, recipe, console or Console(quiet=True))
    if recipe.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = _optimizer(model, recipe, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    ema = EMA(model, recipe.ema_decay) if recipe.uses_ema else None
    return Trainer(model, optimizer, scaler, ema, amp, channels_last, why)


@dataclass
class StepContext:
    """What a training step needs besides the model and optimiser."""

    recipe: Recipe
    device: torch.device
    amp: torch.dtype | None
    num_classes: int
    augmented: bool = False            # the loader already applied auto_augment in its pipeline
    channels_last: bool = False        # resolved from recipe.channels_last (fastvip.methods.model.use_channels_last)
    rank: int = 0
    world: int = 1
    teacher: torch.nn.Module | None = None  # Mean Teacher (the EMA module), eval mode (why: train_step)
    no_sync: object = None             # DDP's no_sync, for all but the last micro-batch
    skip_on_device: bool = False       # NaN/inf steps skipped without a host read (skips_on_device)
    generator: torch.Generator | None = None
    # AutoAugment / RandAugment pick a kernel per group of samples, so the host must know the
    # draws: drawn on the host, the device never has to hand them back
    host_generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self):
        if self.generator is None:
            self.generator = torch.Generator(self.device)


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, ctx: StepContext, step: int, micro: int = 0):
    """uint8 batch -> (model input, soft targets, dominant labels), every random draw keyed on
    (seed, step, micro-batch, rank) so a resumed run augments exactly as an unbroken one.

    Order as in both reports: AutoAugment (uint8) -> normalize -> random erasing -> CutMix/Mixup.
    """
    r = ctx.recipe
    key = [r.seed & 0xFFFFFFFF, step, micro, ctx.rank, 0xA06]
    device_seed, host_seed = np.random.SeedSequence(key).generate_state(2, np.uint64) >> np.uint64(1)
    ctx.generator.manual_seed(int(device_seed))
    if r.auto_augment != "none" and not ctx.augmented:
        ctx.host_generator.manual_seed(int(host_seed))
        images = augment_batch(images, ctx.host_generator, r.auto_augment)
    x = normalize(images, channels_last=ctx.channels_last)
    if r.random_erasing > 0:
        x = random_erasing(x, ctx.generator, p=r.random_erasing)
    targets = losses.smooth_targets(labels, ctx.num_classes, r.label_smoothing)
    mix = draw_mix(np.random.default_rng(key), len(labels) // r.views, r.views, x.shape[2], x.shape[3],
                   prob=r.mix_prob, cutmix_alpha=r.cutmix_alpha, mixup_alpha=r.mixup_alpha,
                   switch_prob=r.mix_switch_prob, generator=ctx.generator, device=x.device)
    x, targets = apply_mix(mix, x, targets)
    fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt), targets, dominant_labels(mix, labels)


def other_view(rows: torch.Tensor, views: int) -> torch.Tensor:
    """Each row of a two-view batch replaced by the other view of its image (rows ``i`` and
    ``i + n`` are one image's views); a one-view batch is returned as it is."""
    if views == 1:
        return rows
    half = len(rows) // views
    return torch.cat([rows[half:], rows[:half]])


def train_step(forward, optimizer, scaler, micro_batches, ctx: StepContext, step: int, n: int = 1,
               mt_ramp: float = 1.0) -> dict[str, torch.Tensor] | None:
    """One optimiser step over ``n`` micro-batches of uint8 images (an iterable, consumed in order).

    Returns the (weighted) loss terms and ``train_loss``, averaged over the micro-batches.
    A NaN/inf loss skips the step on every process, one of two ways:

    - ``ctx.skip_on_device`` (a fused optimiser, no GradScaler) once the optimiser has state:
      nothing is read back. The step runs with the fused kernel's ``found_inf`` set from the
      losses (agreed over processes by an all-reduce on the device), so it changes no weight
      or optimiser state; the returned terms carry ``nonfinite`` (0/1, on the device; the
      other terms are 0 when it is 1) for the caller to count at its own read interval.
    - otherwise: None, decided before any backward (one host read per micro-batch).

    With fp16, steps whose *gradients* overflow are GradScaler's business and are not counted.
    """
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    # a fused kernel's first step must run: a skipped one would leave its momentum buffers unset
    on_device = ctx.skip_on_device and (bool(optimizer.state) or step > 0)
    bad = None
    for i, (images, labels) in enumerate(micro_batches):
        x, targets, dominant = prepare_batch(images, labels, ctx, step, i)
        sync = contextlib.nullcontext() if ctx.no_sync is None or i == n - 1 else ctx.no_sync()
        with sync:
            with autocast(ctx.device, ctx.amp):
                out = forward(x)
                teacher_logits = None
                if ctx.teacher is not None:
                    with torch.no_grad():  # its classifier's logits, never the fused eval output
                        # the student on one view against the teacher on the other (report Fig. 1).
                        # The teacher stays in eval mode: its target is the averaged model as it is
                        # validated, and a train-mode forward would overwrite the BN statistics the
                        # EMA keeps (differently on each process). Eval mode is per-sample, so
                        # pairing its outputs equals feeding it the swapped batch.
                        teacher_logits = other_view(ctx.teacher.outputs(x)["logits"], ctx.recipe.views)
                terms = loss_terms(ctx.recipe, out, targets, dominant, teacher_logits=teacher_logits,
                                   mt_ramp=mt_ramp)
            loss = sum(terms.values())
            if on_device:
                here = (~torch.isfinite(loss.detach())).to(torch.float32)
                bad = here if bad is None else torch.maximum(bad, here)
            else:
                finite = torch.isfinite(loss.detach()).float().reshape(1)
                if distributed.all_reduce_sum(finite).item() < ctx.world:
                    optimizer.zero_grad(set_to_none=True)
                    for _ in micro_batches:  # the skipped step still uses up its micro-batches
                        pass
                    return None
            scaler.scale(loss / n).backward()
        for name, value in [*terms.items(), ("train_loss", loss)]:
            totals[name] = totals.get(name, 0.0) + value.detach() / n
    if on_device:
        bad = distributed.all_reduce_max(bad)  # on the device: no process waits on its host
        optimizer.found_inf = bad  # read by torch's fused kernels: 1 = change nothing
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        totals = {k: torch.where(bad > 0, torch.zeros_like(v), v) for k, v in totals.items()}
        totals["nonfinite"] = bad
        return totals
    scaler.step(optimizer)
    scaler.update()
    return totals


def skips_on_device(recipe: Recipe, device: torch.device, amp) -> bool:
    """Whether a NaN/inf step can be skipped without a host read (see :func:`train_step`):
    a fused optimiser (its kernels take ``found_inf``) and no fp16 GradScaler."""
    return optimizer_impl(recipe, device) == "fused" and amp != torch.float16


def _check_setting(recipe: Recipe, ddp: distributed.Dist, device: torch.device) -> None:
    """What the recipe cannot do in this setting, refused before the run directory is touched."""
    # one process keeps plain BatchNorm (SyncBN there would be a no-op), so only several CPU
    # processes are refused: torch's SyncBatchNorm runs on GPUs only
    if recipe.sync_bn and ddp.world > 1 and device.type != "cuda":
        raise FastvipError(f"sync_bn=true with {ddp.world} CPU processes: SyncBatchNorm needs CUDA devices; "
                           "set sync_bn=false or run one process")
    tensorboard.check(recipe)
    amp_dtype(recipe.amp, device)  # amp=fp16 off CUDA, and an unreadable memory-format table,
    use_channels_last(recipe, device)  # fail here rather than after the loaders are built


def _stop(stopper: Stopper, epoch: int, step: int, metrics: Path | None) -> None:
    """After the stop checkpoint: the stop line (process 0), then every process leaves together,
    so none is killed by torchrun (for another's exit) while process 0 still writes."""
    if metrics is not None:
        metrics_log.append(metrics, {"event": "stop", "signal": stopper.signal_name, "epoch": epoch,
                                     "step": step, "time": time.time()})
    distributed.barrier()
    raise RunStopped(stopper.signal_name, epoch, step)


def _validate(model, ema: EMA | None, val_loader, device, amp, channels_last: bool) -> dict:
    """Val scores of the raw weights and, with an EMA, of the averaged ones (keys raw, ema)."""
    scores = {"raw": evaluate(model, val_loader, device, amp, channels_last)}
    if ema is not None:
        scores["ema"] = evaluate(ema.module, val_loader, device, amp, channels_last)
    return scores


def _val_fields(scores: dict) -> dict:
    """The metrics.jsonl fields of :func:`_validate`'s scores."""
    raw = scores["raw"]
    out = {"val_top1": raw["top1"], "val_top5": raw["top5"], "val_n": raw["n"]}
    if "ema" in scores:
        out.update(val_top1_ema=scores["ema"]["top1"], val_top5_ema=scores["ema"]["top5"])
    return out


def _last_scores(scores: dict, shipped: str, epoch: int) -> dict:
    """The latest epoch's val top-1 of the declared weights, and of raw and EMA (None without val)."""
    top1 = {k: v["top1"] for k, v in scores.items()}
    return {"last_epoch": epoch, "last_weights": shipped, "last_top1": top1.get(shipped),
            "last_top1_raw": top1.get("raw"), "last_top1_ema": top1.get("ema")}


def _weights_in_sync(model, device) -> bool:
    """Whether every process holds the same weights (a float64 checksum, min == max over processes)."""
    import torch.distributed as dist
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, p in enumerate(model.parameters()):
        total[0] += p.detach().double().sum() * (1 + (i % 7))
        total[1] += p.detach().double().square().sum()
    low, high = total.clone(), total.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def _epoch_means(sums: dict, steps: int, world: int, device) -> dict:
    """Per-step means of the logged terms, averaged over processes."""
    if not sums:
        return {"train_loss": float("nan")}
    names = sorted(sums)
    packed = torch.stack([torch.as_tensor(sums[k], device=device, dtype=torch.float32) for k in names])
    packed = distributed.all_reduce_sum(packed) / (max(steps, 1) * world)
    return {k: float(v) for k, v in zip(names, packed.tolist())}


def _open_run_dir(run_dir: Path, recipe: Recipe, resume: bool, console: Console, write: bool = True) -> dict | None:
    """Create or reopen the run directory; return the checkpoint to resume from, if any.

    Every process checks; only the writer (process 0) creates and writes files."""
    last = run_dir / "last.pt"
    if last.exists() and not resume:
        raise FastvipError(f"{run_dir} already holds a run; pass --resume to continue it "
                           "or --out to start a new one")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):
            atomic.remove_stale_temps(run_dir / name)
    ckpt = None
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        saved = recipe_mod.from_dict(ckpt["recipe"])
        # where the run lives, whether it also logs to TensorBoard and how often it checkpoints
        # do not change its results
        diff = [k for k in recipe.to_dict() if getattr(saved, k) != getattr(recipe, k)
                and k not in ("out", "tensorboard", "checkpoint_minutes")]
        if diff:
            raise FastvipError(f"--resume with a different recipe (changed: {', '.join(diff)})")
        if write:
            metrics_log.keep_epochs_up_to(run_dir / "metrics.jsonl", ckpt["epoch"])
    elif resume:
        console.log(f"run: nothing to resume in {run_dir}, starting from scratch")
    if write:
        atomic.write_text(run_dir / "recipe.json", recipe_mod.dumps(recipe))
        atomic.write_text(run_dir / "recipe.py", recipe.to_text())
    return ckpt


def _write_plots(run_dir: Path, console: Console) -> None:
    from fastvip.train.plot import plot_runs
    try:
        plot_runs([run_dir], run_dir / "plots" / "curves.png")
    except (FastvipError, ImportError) as e:  # plots are a convenience; say why there is none
        console.log(f"run: no plot ({e})")


def _last_good(run_dir: Path) -> str:
    last = run_dir / "last.pt"
    return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"


OPTIMIZER_IMPL_KWARGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def optimizer_impl(recipe: Recipe, device: torch.device) -> str:
    """``optimizer_impl`` resolved: ``auto`` is fused where torch has a fused kernel for the
    optimiser (SGD, AdamW; one kernel for all parameters), else foreach (a few batched
    kernels) on CUDA, and torch's own default on CPU."""
    if recipe.optimizer_impl != "auto":
        return recipe.optimizer_impl
    if device.type != "cuda":
        return "default"
    if recipe.optimizer in ("sgd", "adamw"):
        return "fused"
    # timm releases before RMSpropTF grew a foreach argument run its per-tensor loop
    return "foreach" if _takes(recipe.optimizer, "foreach") else "default"


def _optimizer_class(name: str):
    """The class timm's factory builds for a recipe optimiser."""
    if name == "rmsproptf":
        from timm.optim import RMSpropTF
        return RMSpropTF
    return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]


def _takes(name: str, arg: str) -> bool:
    import inspect
    return arg in inspect.signature(_optimizer_class(name)).parameters


def _optimizer(model, recipe: Recipe, device: torch.device):
    """timm's optimizer factory; weight decay skips norm layers and biases."""
    from timm.optim import create_optimizer_v2
    name = recipe.optimizer
    kwargs = dict(OPTIMIZER_IMPL_KWARGS.get(optimizer_impl(recipe, device), {}))
    missing = [k for k in kwargs if not _takes(name, k)]
    if missing:
        import timm
        raise FastvipError(f"optimizer_impl={recipe.optimizer_impl}: {_optimizer_class(name).__name__} of timm "
                           f"{timm.__version__} has no {missing[0]} argument; use optimizer_impl=auto or a newer timm")
    if name == "sgd":  # timm's "sgd" is Nesterov; "momentum" is plain momentum SGD
        name = "nesterov" if recipe.nesterov else "momentum"
        kwargs["momentum"] = recipe.momentum
    elif name == "rmsproptf":
        kwargs["momentum"] = recipe.momentum
    if recipe.opt_eps is not None:
        kwargs["eps"] = recipe.opt_eps
    return create_optimizer_v2(model, opt=name, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
                               filter_bias_and_bn=True, **kwargs)


def _init_weights(model, recipe: Recipe, console: Console) -> None:
    """Weights only from ``init_from`` (stage 2, fine-tunes); heads may differ (see
    :func:`fastvip.methods.net.adapt_init_weights`). Optimiser and schedule start fresh."""
    path = Path(recipe.init_from)
    if not path.exists():
        first = f"; train it first: fastvip run {recipe.init_recipe}" if recipe.init_recipe else \
            "; train the recipe it names first"
        raise FastvipError(f"init_from {recipe.init_from} does not exist{first}")
    weights, which = inference_weights(load_checkpoint(find_weights(path, "best")))
    try:
        state, fresh = adapt_init_weights(model, weights)
    except FastvipError as e:
        raise FastvipError(f"init_from {recipe.init_from}: {e}") from None
    model.load_state_dict(state)
    console.log(f"run: initialised from {recipe.init_from} ({which} weights"
                + (f"; new: {', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh}))}" if fresh else "") + ")")


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain values (checkpoints load with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _epoch_text(line: dict, epochs: int) -> str:
    parts = [f"epoch {line['epoch']}/{epochs}", f"loss {line['train_loss']:.4f}"]
    terms = [(k[5:], v) for k, v in line.items() if k.startswith("loss_")]
    if len(terms) > 1:  # one term is the loss itself
        parts += [f"{name} {v:.3f}" for name, v in terms]
    if "val_top1" in line:
        parts.append(f"val_top1 {line['val_top1']:.2f}")
    if "val_top1_ema" in line:
        parts.append(f"ema {line['val_top1_ema']:.2f}")
    parts += [f"{line['image_size']} px", f"lr {line['lr']:.4g}", f"{line['img_per_s']:,.0f} img/s"]
    return "  ".join(parts)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    return "-" if v is None else str(v)
