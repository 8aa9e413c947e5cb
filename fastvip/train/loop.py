"""``fastvip run``: the training loop, read top to bottom.

:func:`run` opens the run directory (or the checkpoint to resume), builds the loaders and the
trainer (:func:`fastvip.train.trainer.build_trainer`, the set-up every caller shares), then
for each epoch: the train steps (:func:`train_epoch`, each one :func:`fastvip.train.step.train_step`),
validation of the raw and EMA weights, an atomic checkpoint and one ``metrics.jsonl`` line
(:func:`finish_epoch`). Where the run is lives in one :class:`~fastvip.train.state.RunState`;
the learning rate is a pure function of its step counter (:class:`fastvip.train.schedule.Schedule`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastvip import atomic, distributed, recipe as recipe_mod
from fastvip.console import Console
from fastvip.data.merge import merge, merged_path
from fastvip.data.packed import check_label_indices
from fastvip.errors import FastvipError
from fastvip.infer.evaluate import evaluate
from fastvip.loaders import build_loader, in_pipeline
from fastvip.methods.model import amp_dtype, resolve_device, use_channels_last
from fastvip.recipe import Recipe
from fastvip.train import metrics as metrics_log, report, tensorboard
from fastvip.train.rundir import last_good, open_run_dir, save_best, save_last, write_plots
from fastvip.train.runlock import RunLock
from fastvip.train.schedule import Schedule, max_train_resolution, train_resolution
from fastvip.train.state import RunState, seed_everything, set_rng_state
from fastvip.train.step import train_step
from fastvip.train.stop import RunStopped, Stopper
from fastvip.train.trainer import Trainer, build_trainer


def run(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, console: Console | None = None,
        stop_after: int | None = None) -> dict:
    """Train ``recipe`` into ``run_dir``; returns the run summary.

    Under torchrun every process calls this; process 0 writes the run directory.
    ``stop_after`` ends the run after that many epochs (the schedule still spans
    ``recipe.epochs``), as if it had been interrupted there.
    """
    ddp, device = distributed.setup(resolve_device(recipe.device))
    try:
        check_setting(recipe, ddp, device)
        with contextlib.ExitStack() as hold:
            if ddp.main:  # one writer per run directory, before anything in it is written
                hold.enter_context(RunLock(Path(run_dir)))
            return _run(recipe, Path(run_dir), resume, console or Console(), stop_after, ddp, device)
    finally:
        distributed.teardown()


def _run(recipe: Recipe, run_dir: Path, resume: bool, console: Console, stop_after: int | None,
         ddp: distributed.Dist, device: torch.device) -> dict:
    console = console if ddp.main else Console(quiet=True)
    ckpt = open_run_dir(run_dir, recipe, resume, console, write=ddp.main)
    distributed.barrier()
    seed_everything(recipe.seed)
    data = build_data(recipe, device, ddp, console)
    trainer = build_trainer(recipe, device, len(data.classes), console, world=ddp.world, rank=ddp.rank,
                            augmented=in_pipeline(data.train), checkpoint=ckpt, classes=data.classes)
    state = RunState()
    if ckpt is not None:
        state = RunState.from_checkpoint(ckpt)
        set_rng_state(ckpt["rng"])
    job = Job(recipe, run_dir, ddp, device, console, data, trainer, state, Schedule.of(recipe, data.steps),
              tensorboard.open_board(recipe, run_dir, state.step, ddp.main),
              Stopper(recipe.checkpoint_minutes, ddp.world, device))
    report.start(job, resumed=ckpt is not None)

    t_run = time.perf_counter()
    try:
        for epoch in range(state.epoch, recipe.epochs):
            size = train_resolution(recipe, epoch)  # progressive resizing: a function of the epoch
            tally = train_epoch(job, epoch, size)
            finish_epoch(job, epoch, size, tally)
            if job.stopper.poll(state.step) == "stop" and epoch + 1 < recipe.epochs:  # the epoch's checkpoint stands
                stop(job, epoch + 1)
            if stop_after is not None and epoch + 1 >= stop_after:
                break
    except RunStopped as stopped:
        job.board.close()
        console.log(f"run: {stopped}; checkpoint {run_dir / 'last.pt'}, continue with --resume")
        raise
    finally:
        job.stopper.close()

    job.board.close()
    distributed.barrier()
    if ddp.main:
        write_plots(run_dir, console)
    return report.summary(job, time.perf_counter() - t_run)


@dataclass
class Data:
    """The run's loaders and what they hold."""

    train: object
    val: object | None
    classes: list[str]
    steps: int  # optimiser steps per epoch


@dataclass
class Job:
    """One run in progress: what every part of the loop reads, and the one state it changes."""

    recipe: Recipe
    run_dir: Path
    ddp: distributed.Dist
    device: torch.device
    console: Console
    data: Data
    trainer: Trainer
    state: RunState
    schedule: Schedule
    board: tensorboard.Board
    stopper: Stopper

    @property
    def metrics(self) -> Path | None:
        """``metrics.jsonl``, for the process that writes it (None on the others)."""
        return self.run_dir / "metrics.jsonl" if self.ddp.main else None

    @property
    def images_per_step(self) -> int:
        return self.recipe.batch_size * self.recipe.views


def build_data(recipe: Recipe, device: torch.device, ddp: distributed.Dist, console: Console) -> Data:
    """The train loader (train+val merged first when the recipe names several files) and the
    val loader, with their class lists checked against each other."""
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
              "resident_size": recipe.resident_size, "resident_storage": recipe.resident_storage,
              "skip_damaged": recipe.skip_damaged, "console": console}
    train = build_loader(recipe.loader, files[0], train=True, batch_size=recipe.batch_size // recipe.grad_accum,
                         image_size=max_train_resolution(recipe), auto_augment=recipe.auto_augment,
                         views=recipe.views, pk=recipe.pk_samples, **common)
    classes = train.classes
    if not classes:
        raise FastvipError(f"{files[0]} is unlabelled; training needs class folders")
    steps = len(train) // recipe.grad_accum
    if steps == 0:
        raise FastvipError(f"batch_size {recipe.batch_size} is larger than the {train.packed.num_samples} "
                           f"training images (the last partial batch is dropped)")
    val = None
    if recipe.val_data:
        val = build_loader(recipe.loader, recipe.val_data, train=False, batch_size=max(1, recipe.batch_size // ddp.world),
                           image_size=recipe_mod.eval_resolution(recipe), **common)
        if not val.packed.sidecar:  # written by FFCV's own tools: its labels index the classes
            check_label_indices(val.packed, classes, files[0])
        elif val.classes != classes:
            raise FastvipError(f"class lists differ: {files[0]} has {len(classes)} classes, "
                               f"{recipe.val_data} has {len(val.classes)}")
    return Data(train, val, classes, steps)


class EpochTally:
    """An epoch's running counts: steps done and skipped, loss sums and NaN/inf flags kept on the
    device (read at the progress interval, never per step), and when it started."""

    def __init__(self, device: torch.device, mid: dict | None = None):
        mid = mid or {"sums": {}, "done": 0, "skipped": 0, "seconds": 0.0}
        self.sums = {k: torch.tensor(v, device=device) for k, v in mid["sums"].items()}
        self.done, self.skipped = mid["done"], mid["skipped"]
        self.t0 = time.perf_counter() - mid["seconds"]
        self.device = device
        self.unread: list[torch.Tensor] = []

    def add(self, terms: dict | None) -> torch.Tensor | None:
        """Count one step; returns its device-side NaN/inf flag, if it has one."""
        self.done += 1
        if terms is None:  # skipped on the host
            self.unread.append(torch.ones((), device=self.device))
            return None
        bad = terms.pop("nonfinite", None)
        if bad is not None:
            self.unread.append(bad)
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
        return bad

    def read_skipped(self) -> int:
        """Move the skipped steps flagged since the last read from done to skipped (one host read)."""
        if not self.unread:
            return 0
        n_bad = int(torch.stack(self.unread).sum().item())
        self.unread.clear()
        self.done, self.skipped = self.done - n_bad, self.skipped + n_bad
        return n_bad

    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def train_epoch(job: Job, epoch: int, size: int) -> EpochTally:
    """The train steps of ``epoch`` (from its first step, or where a mid-epoch checkpoint left it)."""
    r, st, t = job.recipe, job.state, job.trainer
    mid, st.mid_epoch = st.mid_epoch, None
    first = mid["steps"] if mid else 0
    job.data.train.set_epoch(epoch, image_size=size, start_batch=first * r.grad_accum)
    t.model.train()
    tally = EpochTally(job.device, mid)
    with job.console.progress(f"epoch {epoch + 1}/{r.epochs}", job.data.steps * job.images_per_step) as bar:
        batches = iter(job.data.train)
        for i in range(first, job.data.steps):
            action = job.stopper.poll(st.step) if i > first else None
            if action is not None:  # a step boundary inside the epoch: i steps done
                checkpoint_mid_epoch(job, epoch, i, tally)
                if action == "stop":
                    stop(job, epoch)
            lr = job.schedule.lr(st.step)
            for group in t.optimizer.param_groups:
                group["lr"] = lr
            # micro-batches are fetched one at a time: a loader may reuse a batch's buffer once the
            # next one is fetched, so none is held across a fetch
            micro = itertools.islice(batches, r.grad_accum)
            terms = train_step(t.forward, t.optimizer, t.scaler, micro, t.ctx, st.step, n=r.grad_accum,
                               mt_ramp=job.schedule.mt_ramp(st.step))
            st.step += 1
            bad = tally.add(terms)
            if terms is None:
                count_skipped(job, tally, epoch)
                continue
            if t.ema is not None:
                t.ema.update(t.model, st.step - 1, skip=bad)
            if st.step % 10 == 0 or i + 1 == job.data.steps:
                count_skipped(job, tally, epoch)
                loss = terms["train_loss"].item()
                bar.advance((i + 1) * job.images_per_step - bar.done, step=st.step, loss=f"{loss:.3f}", lr=f"{lr:.4g}")
                job.board.step(st.step, loss, lr)
        for _ in batches:  # fewer than grad_accum left over: let the loader finish its epoch
            pass
        count_skipped(job, tally, epoch)
    return tally


def count_skipped(job: Job, tally: EpochTally, epoch: int) -> None:
    """Read the skipped-step flags; too many NaN/inf steps in the run stop it."""
    job.state.nonfinite += tally.read_skipped()
    if job.state.nonfinite > job.recipe.max_nonfinite_steps:
        raise FastvipError(f"loss was NaN/inf in {job.state.nonfinite} steps (max_nonfinite_steps="
                           f"{job.recipe.max_nonfinite_steps}); stopped in epoch {epoch + 1}, {last_good(job.run_dir)}")


def checkpoint_mid_epoch(job: Job, epoch: int, steps_done: int, tally: EpochTally) -> None:
    """``last.pt`` after ``steps_done`` steps of ``epoch``: a stop or the checkpoint timer."""
    count_skipped(job, tally, epoch)
    # the loss sums so far, averaged over processes: each resumes from the mean
    partial = report.epoch_means(tally.sums, 1, job.ddp.world, job.device) if tally.sums else {}
    if job.ddp.main:
        job.state.mid_epoch = {"steps": steps_done, "done": tally.done, "skipped": tally.skipped, "sums": partial,
                               "seconds": tally.seconds()}
        save_last(job.run_dir, job.trainer, job.state, job.recipe, job.data.classes)
        job.state.mid_epoch = None


def finish_epoch(job: Job, epoch: int, size: int, tally: EpochTally) -> None:
    """After the steps: validation, the best and last scores, checkpoints and the metrics line."""
    r, st, t, ddp = job.recipe, job.state, job.trainer, job.ddp
    st.rates.append(tally.done * job.images_per_step / tally.seconds())
    if not all(torch.isfinite(p).all() for p in t.model.parameters()):
        raise FastvipError(f"weights became NaN/inf in epoch {epoch + 1} (lower lr?); {last_good(job.run_dir)}")
    with job.stopper.busy():  # a stop asked for now waits for the epoch's checkpoint
        line = {"event": "epoch", "epoch": epoch + 1, "image_size": size,
                **report.epoch_means(tally.sums, tally.done, ddp.world, job.device), "nonfinite_steps": tally.skipped}
        if ddp.world > 1:
            line["weights_in_sync"] = report.weights_in_sync(t.model, job.device)
            if not line["weights_in_sync"]:
                raise FastvipError(f"the processes' weights differ after epoch {epoch + 1} (DDP out of sync)")
        scores = {}
        if job.data.val is not None and recipe_mod.validates(r, epoch):
            scores = validate(t, job.data.val, job.device)
            line.update(report.val_fields(scores))
        line["damaged_skipped"] = take_damaged_skipped(job.data, ddp.world, job.device)
        line.update(lr=job.schedule.lr(st.step - 1), img_per_s=st.rates[-1] * ddp.world,
                    epoch_time_s=tally.seconds(), time=time.time())  # wall clock: benchmarks place epochs in time
        improved = report.update_scores(st, scores, r.shipped_weights(), epoch + 1, job.data.val is None)
        if epoch + 1 == r.epochs:
            line.update(last_top1=st.last["last_top1"], last_weights=r.shipped_weights())
        st.epoch = epoch + 1
        if ddp.main:
            if improved:
                save_best(job.run_dir, t, st.best["weights"], epoch + 1, r, job.data.classes)
            atomic.write_json(job.run_dir / "best.json", {**st.best, **st.last})
            save_last(job.run_dir, t, st, r, job.data.classes)
            metrics_log.append(job.metrics, line)
            job.board.epoch(line)
    job.console.log(report.epoch_text(line, r.epochs))


def take_damaged_skipped(data: Data, world: int, device: torch.device) -> int:
    """Damaged samples the loaders left out (``skip_damaged``) since the last call, all processes."""
    n = 0
    for loader in (data.train, data.val):
        if loader is not None:
            n += getattr(loader, "damaged_skipped", 0)
            loader.damaged_skipped = 0
    if world > 1:
        n = int(distributed.all_reduce_sum(torch.tensor(float(n), device=device)).item())  # once an epoch
    return n


def validate(trainer: Trainer, val_loader, device: torch.device) -> dict:
    """Val scores of the raw weights and, with an EMA, of the averaged ones (keys raw, ema)."""
    scores = {"raw": evaluate(trainer.model, val_loader, device, trainer.amp, trainer.channels_last)}
    if trainer.ema is not None:
        scores["ema"] = evaluate(trainer.ema.module, val_loader, device, trainer.amp, trainer.channels_last)
    return scores


def stop(job: Job, epoch: int) -> None:
    """After the stop checkpoint: the stop line (process 0), then every process leaves together,
    so none is killed by torchrun (for another's exit) while process 0 still writes."""
    if job.metrics is not None:
        metrics_log.append(job.metrics, {"event": "stop", "signal": job.stopper.signal_name, "epoch": epoch,
                                         "step": job.state.step, "time": time.time()})
    distributed.barrier()
    raise RunStopped(job.stopper.signal_name, epoch, job.state.step)


def check_setting(recipe: Recipe, ddp: distributed.Dist, device: torch.device) -> None:
    """What the recipe cannot do in this setting, refused before the run directory is touched."""
    # one process keeps plain BatchNorm (SyncBN there would be a no-op), so only several CPU
    # processes are refused: torch's SyncBatchNorm runs on GPUs only
    if recipe.sync_bn and ddp.world > 1 and device.type != "cuda":
        raise FastvipError(f"sync_bn=true with {ddp.world} CPU processes: SyncBatchNorm needs CUDA devices; "
                           "set sync_bn=false or run one process")
    tensorboard.check(recipe)
    amp_dtype(recipe.amp, device)  # amp=fp16 off CUDA, and an unreadable memory-format table,
    use_channels_last(recipe, device)  # fail here rather than after the loaders are built
