"""``fastvip run``: the training loop.

One function, read top to bottom: set-up (or resume), then for each epoch the
train steps, validation (raw and EMA weights), an atomic checkpoint and one
``metrics.jsonl`` line. The learning rate is a pure function of the explicit
step counter (:func:`fastvip.schedule.lr_at`).
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loaders import build_loader

from . import atomic, metrics as metrics_log, recipe as recipe_mod
from .augment import normalize
from .console import Console
from .ema import EMA
from .errors import FastvipError
from .evaluate import evaluate
from .model import (amp_dtype, autocast, build_model, find_weights, inference_weights,
                    load_checkpoint, resolve_device, save_checkpoint)
from .recipe import Recipe
from .schedule import lr_at


def run(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, console: Console | None = None,
        stop_after: int | None = None) -> dict:
    """Train ``recipe`` into ``run_dir``; returns the run summary.

    ``stop_after`` ends the run after that many epochs (the schedule still spans
    ``recipe.epochs``), as if it had been interrupted there.
    """
    console = console or Console()
    run_dir = Path(run_dir)
    device = resolve_device(recipe.device)
    amp = amp_dtype(recipe.amp, device)
    ckpt = _open_run_dir(run_dir, recipe, resume, console)

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed % 2**32)
    random.seed(recipe.seed)

    files = recipe.train_files
    if len(files) != 1:
        raise FastvipError("recipe.train_data must name exactly one packed file "
                           "(several train files are not supported yet)")
    common = dict(batch_size=recipe.batch_size, image_size=recipe.image_size, device=device,
                  seed=recipe.seed, workers=recipe.workers, eval_crop=recipe.eval_crop,
                  crop_scale=(recipe.crop_scale_min, 1.0))
    train_loader = build_loader(recipe.loader, files[0], train=True, auto_augment=recipe.auto_augment, **common)
    classes = train_loader.classes
    if not classes:
        raise FastvipError(f"{files[0]} is unlabelled; training needs class folders")
    if len(train_loader) == 0:
        raise FastvipError(f"batch_size {recipe.batch_size} is larger than the {train_loader.num_samples} "
                           f"training images (the last partial batch is dropped)")
    val_loader = None
    if recipe.val_data:
        val_loader = build_loader(recipe.loader, recipe.val_data, train=False, **common)
        if val_loader.classes != classes:
            raise FastvipError(f"class lists differ: {files[0]} has {len(classes)} classes, "
                               f"{recipe.val_data} has {len(val_loader.classes)}")

    model = build_model(recipe, len(classes)).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.init_from and ckpt is None:
        _init_weights(model, recipe.init_from, console)
    optimizer = _optimizer(model, recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    ema = EMA(model, recipe.ema_decay) if recipe.ema else None
    step, start_epoch, best = 0, 0, {"top1": None, "epoch": None, "weights": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        step, start_epoch, best = ckpt["step"], ckpt["epoch"], ckpt["best"]
        _set_rng_state(ckpt["rng"])
    forward = torch.compile(model) if recipe.compile else model

    steps_per_epoch = len(train_loader)
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)
    peak_lr = recipe.scaled_lr()
    metrics = run_dir / "metrics.jsonl"
    metrics_log.append(metrics, {
        "event": "start", "time": time.time(), "loader": recipe.loader, "world_size": 1,
        "device": str(device), "model": recipe.model, "resumed_from_epoch": start_epoch if ckpt else None,
        "num_classes": len(classes), "num_train": train_loader.num_samples,
        "num_val": val_loader.num_samples if val_loader else 0, "batch_size": recipe.batch_size,
        "peak_lr": peak_lr, "amp": str(amp).replace("torch.", "") if amp else "off",
        "os_cache": getattr(train_loader, "os_cache", None)})
    console.log(f"run: {recipe.model} on {device}, {train_loader.num_samples} train images, "
                f"{len(classes)} classes, {steps_per_epoch} steps/epoch, loader {recipe.loader}"
                + (f", resumed after epoch {start_epoch}" if ckpt else ""))

    t_run = time.perf_counter()
    rates, nonfinite = [], 0
    for epoch in range(start_epoch, recipe.epochs):
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        seen, skipped, t0 = 0, 0, time.perf_counter()
        with console.progress(f"epoch {epoch + 1}/{recipe.epochs}", steps_per_epoch * recipe.batch_size) as bar:
            for images, labels in train_loader:
                lr = lr_at(step, total_steps, warmup_steps, peak_lr, recipe.warmup_lr, recipe.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = train_step(forward, optimizer, scaler, images, labels, recipe, device, amp)
                if loss is None:
                    nonfinite += 1
                    skipped += 1
                    step += 1
                    if nonfinite > recipe.max_nonfinite_steps:
                        raise FastvipError(
                            f"loss was NaN/inf in {nonfinite} steps (max_nonfinite_steps="
                            f"{recipe.max_nonfinite_steps}); stopped in epoch {epoch + 1}, "
                            f"{_last_good(run_dir)}")
                    continue
                if ema is not None:
                    ema.update(model, step)
                step += 1
                loss_sum += loss.detach() * labels.numel()
                seen += labels.numel()
                if step % 10 == 0 or seen == steps_per_epoch * recipe.batch_size:
                    bar.advance(seen - bar.done, step=step, loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
        train_time = time.perf_counter() - t0
        rates.append(seen / train_time)
        train_loss = (loss_sum / seen).item() if seen else float("nan")
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise FastvipError(f"weights became NaN/inf in epoch {epoch + 1} (lower lr?); {_last_good(run_dir)}")

        line = {"event": "epoch", "epoch": epoch + 1, "train_loss": train_loss, "loss_ce": train_loss,
                "nonfinite_steps": skipped}
        scores = {}
        if val_loader is not None:
            scores["raw"] = evaluate(model, val_loader, device, amp, recipe.channels_last)
            line.update(val_top1=scores["raw"]["top1"], val_top5=scores["raw"]["top5"])
            if ema is not None:
                scores["ema"] = evaluate(ema.module, val_loader, device, amp, recipe.channels_last)
                line.update(val_top1_ema=scores["ema"]["top1"], val_top5_ema=scores["ema"]["top5"])
        line.update(lr=lr, img_per_s=rates[-1], epoch_time_s=time.perf_counter() - t0)

        weights = max(scores, key=lambda k: scores[k]["top1"]) if scores else ("ema" if ema else "raw")
        chosen = (ema.module if weights == "ema" else model).state_dict()
        top1 = scores[weights]["top1"] if scores else None
        improved = best["top1"] is None or (top1 is not None and top1 > best["top1"])
        if improved:
            best = {"top1": top1, "epoch": epoch + 1, "weights": weights}
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else None,
                 "step": step, "epoch": epoch + 1, "best": best, "rng": _rng_state(),
                 "recipe": recipe.to_dict(), "classes": classes, "inference": chosen, "weights": weights}
        if improved:
            save_checkpoint(run_dir / "best.pt", {k: state[k] for k in
                                                  ("inference", "weights", "epoch", "recipe", "classes")})
            atomic.write_json(run_dir / "best.json", best)
        save_checkpoint(run_dir / "last.pt", state)
        metrics_log.append(metrics, line)
        console.log(_epoch_text(line, recipe.epochs))
        if stop_after is not None and epoch + 1 >= stop_after:
            break

    _write_plots(run_dir, console)
    summary = {"best_top1": best["top1"], "best_epoch": best["epoch"], "best_weights": best["weights"],
               "wall_time_s": time.perf_counter() - t_run,
               "img_per_s": float(np.median(rates)) if rates else None, "run_dir": os.fspath(run_dir)}
    console.table("run summary", [(k, _fmt(v)) for k, v in summary.items()])
    return summary


def train_step(forward, optimizer, scaler, images, labels, recipe: Recipe, device, amp):
    """One optimiser step on a uint8 batch; returns the loss, or None when it was NaN/inf (skipped).

    One host sync per step (GradScaler makes one too): a NaN/inf loss is skipped
    before backward. With fp16, steps whose *gradients* overflow are GradScaler's
    business (it skips them and lowers the scale) and are not counted here.
    """
    x = normalize(images, channels_last=recipe.channels_last)
    with autocast(device, amp):
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
    if not torch.isfinite(loss):
        return None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def _open_run_dir(run_dir: Path, recipe: Recipe, resume: bool, console: Console) -> dict | None:
    """Create or reopen the run directory; return the checkpoint to resume from, if any."""
    last = run_dir / "last.pt"
    if last.exists() and not resume:
        raise FastvipError(f"{run_dir} already holds a run; pass --resume to continue it "
                           "or --out to start a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "best.pt"):
        atomic.remove_stale_temps(run_dir / name)
    ckpt = None
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        saved = recipe_mod.from_dict(ckpt["recipe"])
        diff = [k for k in recipe.to_dict() if getattr(saved, k) != getattr(recipe, k) and k != "out"]
        if diff:
            raise FastvipError(f"--resume with a different recipe (changed: {', '.join(diff)})")
        metrics_log.keep_epochs_up_to(run_dir / "metrics.jsonl", ckpt["epoch"])
    elif resume:
        console.log(f"run: nothing to resume in {run_dir}, starting from scratch")
    atomic.write_text(run_dir / "recipe.json", recipe_mod.dumps(recipe))
    atomic.write_text(run_dir / "recipe.py", recipe.to_text())
    return ckpt


def _write_plots(run_dir: Path, console: Console) -> None:
    from .plot import plot_runs
    try:
        plot_runs([run_dir], run_dir / "plots" / "curves.png")
    except (FastvipError, ImportError) as e:  # plots are a convenience; say why there is none
        console.log(f"run: no plot ({e})")


def _last_good(run_dir: Path) -> str:
    last = run_dir / "last.pt"
    return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"


def _optimizer(model, recipe: Recipe):
    """timm's optimizer factory; weight decay skips norm layers and biases."""
    from timm.optim import create_optimizer_v2
    name = recipe.optimizer
    kwargs = {}
    if name == "sgd":  # timm's "sgd" is Nesterov; "momentum" is plain momentum SGD
        name = "nesterov" if recipe.nesterov else "momentum"
        kwargs["momentum"] = recipe.momentum
    elif name == "rmsproptf":
        kwargs["momentum"] = recipe.momentum
    return create_optimizer_v2(model, opt=name, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
                               filter_bias_and_bn=True, **kwargs)


def _init_weights(model, init_from: str, console: Console) -> None:
    path = Path(init_from)
    if not path.exists():
        raise FastvipError(f"init_from {init_from} does not exist; train the recipe it names first")
    weights, which = inference_weights(load_checkpoint(find_weights(path, "best")))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise FastvipError(f"init_from {init_from} does not fit {type(model).__name__}: {first}") from None
    console.log(f"run: initialised from {init_from} ({which} weights)")


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _epoch_text(line: dict, epochs: int) -> str:
    parts = [f"epoch {line['epoch']}/{epochs}", f"loss {line['train_loss']:.4f}"]
    if "val_top1" in line:
        parts.append(f"val_top1 {line['val_top1']:.2f}")
    if "val_top1_ema" in line:
        parts.append(f"ema {line['val_top1_ema']:.2f}")
    parts += [f"lr {line['lr']:.4g}", f"{line['img_per_s']:,.0f} img/s"]
    return "  ".join(parts)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    return "-" if v is None else str(v)
