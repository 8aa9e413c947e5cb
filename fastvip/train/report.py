"""What a run reports: its start line, each epoch's metrics and console line, the final summary.

Kept apart from the loop so that :mod:`fastvip.train.loop` reads as the steps it takes.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from fastvip import distributed, recipe as recipe_mod
from fastvip.methods.model import amp_name
from fastvip.train import metrics as metrics_log
from fastvip.train.optim import optimizer_impl
from fastvip.train.state import RunState


def stores(train_loader, val_loader) -> dict | None:
    """Where a resident loader keeps each split's pixels (None for loaders that decode per epoch)."""
    out = {name: ld.store for name, ld in (("train", train_loader), ("val", val_loader))
           if getattr(ld, "store", None)}
    return out or None


def start(job, resumed: bool) -> None:
    """The ``start`` line of ``metrics.jsonl`` and the run's opening console lines."""
    r, ddp, data, t = job.recipe, job.ddp, job.data, job.trainer
    impl = optimizer_impl(r, job.device)
    where = stores(data.train, data.val)
    if job.metrics is not None:
        metrics_log.append(job.metrics, {
            "event": "start", "time": time.time(), "loader": r.loader, "world_size": ddp.world,
            "device": str(job.device), "model": r.model, "resumed_from_epoch": job.state.epoch if resumed else None,
            "num_classes": len(data.classes), "num_train": data.train.num_samples * ddp.world,
            "num_val": data.val.packed.num_samples if data.val else 0, "batch_size": r.batch_size,
            "grad_accum": r.grad_accum, "views": r.views, "eval_size": recipe_mod.eval_resolution(r),
            "peak_lr": job.schedule.peak, "amp": amp_name(t.amp), "channels_last": t.channels_last,
            "optimizer_impl": impl, "os_cache": getattr(data.train, "os_cache", None), "store": where})
    job.console.log(f"run: {r.model} on {job.device}" + (f" x {ddp.world} processes" if ddp.world > 1 else "")
                    + f", {data.train.num_samples * ddp.world} train images, {len(data.classes)} classes, "
                    f"{data.steps} steps/epoch, loader {r.loader}"
                    + (f", resumed after epoch {job.state.epoch}" if resumed else ""))
    for name, st in (where or {}).items():
        held = st.get("allocated", st["bytes"])
        job.console.log(f"run: {name} images resident ({st.get('storage', 'pixels')}) in {st['where']}: {st['bytes'] / 2**20:,.1f} MiB "
                        + (f"({held / 2**20:,.1f} MiB allocated: pinned blocks are rounded up to a power of two) "
                           if held != st["bytes"] else "")
                        + f"({st['images']} images, longest side {st['resident_size']} px)"
                        + (f"; {st['why']}" if st.get("why") else ""))
    job.console.log(f"run: channels-last {'on' if t.channels_last else 'off'} ({t.channels_last_why}), "
                    f"optimizer {r.optimizer} ({impl})")


def epoch_means(sums: dict, steps: int, world: int, device) -> dict:
    """Per-step means of the logged terms, averaged over processes."""
    if not sums:
        return {"train_loss": float("nan")}
    names = sorted(sums)
    packed = torch.stack([torch.as_tensor(sums[k], device=device, dtype=torch.float32) for k in names])
    packed = distributed.all_reduce_sum(packed) / (max(steps, 1) * world)
    return {k: float(v) for k, v in zip(names, packed.tolist())}


def weights_in_sync(model, device) -> bool:
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


def val_fields(scores: dict) -> dict:
    """The metrics.jsonl fields of the validation scores (keys raw and, with an EMA, ema)."""
    raw = scores["raw"]
    out = {"val_top1": raw["top1"], "val_top5": raw["top5"], "val_n": raw["n"]}
    if "ema" in scores:
        out.update(val_top1_ema=scores["ema"]["top1"], val_top5_ema=scores["ema"]["top5"])
    return out


def update_scores(state: RunState, scores: dict, shipped: str, epoch: int, no_val: bool) -> bool:
    """Update the best (val-selected) and last (declared weights, no choice made on val) scores
    after ``epoch``; returns whether the best improved (then ``best.pt`` is written)."""
    weights = max(scores, key=lambda k: scores[k]["top1"]) if scores else shipped
    top1 = scores[weights]["top1"] if scores else None
    best = state.best["top1"]
    improved = best is None or (top1 is not None and top1 > best)
    if improved:
        state.best = {"top1": top1, "epoch": epoch, "weights": weights}
    if scores or no_val:
        last = {k: v["top1"] for k, v in scores.items()}
        state.last = {"last_epoch": epoch, "last_weights": shipped, "last_top1": last.get(shipped),
                      "last_top1_raw": last.get("raw"), "last_top1_ema": last.get("ema")}
    return improved


def epoch_text(line: dict, epochs: int) -> str:
    """An epoch's console line."""
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


def summary(job, wall_time_s: float) -> dict:
    """The run summary ``fastvip.train.run`` returns, also printed as a table."""
    st, world = job.state, job.ddp.world
    last = st.last
    out = {"last_top1": last.get("last_top1"), "last_weights": last.get("last_weights"),
           "last_epoch": last.get("last_epoch"), "last_top1_raw": last.get("last_top1_raw"),
           "last_top1_ema": last.get("last_top1_ema"),
           "best_top1": st.best["top1"], "best_epoch": st.best["epoch"], "best_weights": st.best["weights"],
           "wall_time_s": wall_time_s,
           "img_per_s": float(np.median(st.rates)) * world if st.rates else None,
           "world_size": world, "run_dir": os.fspath(job.run_dir)}
    job.console.table("run summary", [(k, _fmt(v)) for k, v in out.items()])
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    return "-" if v is None else str(v)
