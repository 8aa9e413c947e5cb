"""One training step: the step context, batch preparation on the device, and the step itself.

Everything random in a step is keyed on (seed, step, micro-batch, rank), so a resumed run
augments exactly as an unbroken one. A NaN/inf step is skipped on every process; with a
fused optimiser that happens on the device, without a host read (:func:`train_step`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from fastvip import distributed
from fastvip.methods import losses
from fastvip.methods.augment import normalize
from fastvip.methods.autoaugment import augment_batch, random_erasing
from fastvip.methods.mix import apply_mix, dominant_labels, draw_mix
from fastvip.methods.model import autocast, indexed_device
from fastvip.methods.objective import loss_terms
from fastvip.recipe import Recipe
from fastvip.train.optim import optimizer_impl


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
    teachers: list = field(default_factory=list)  # distillation (fastvip.train.teachers.Teacher)
    generator: torch.Generator | None = None
    # AutoAugment / RandAugment pick a kernel per group of samples, so the host must know the
    # draws: drawn on the host, the device never has to hand them back
    host_generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self):
        # "cuda" and "cuda:0" are one device to a tensor but not to a generator check: the batch
        # lives on the indexed device, and a generator elsewhere is reseeded through a host read
        self.device = indexed_device(self.device)
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

    - ``ctx.skip_on_device`` (:func:`skips_on_device`): nothing is read back. The flag (agreed
      over processes by an all-reduce on the device) reaches the step as a fused kernel's
      ``found_inf``, through GradScaler's (fp16), or through :func:`masked_step` (optimisers
      without a fused kernel, once they have state), so the step changes no weight or
      optimiser state; the returned terms carry ``nonfinite`` (0/1, on the device; the other
      terms are 0 when it is 1) for the caller to count at its own read interval.
    - otherwise: None, decided before any backward (one host read per micro-batch).

    With fp16, steps whose *gradients* overflow are GradScaler's business and are not counted.
    """
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    fused = bool(optimizer.defaults.get("fused"))
    start_momentum(optimizer)
    # a first step of an optimiser without a fused kernel creates its state: no snapshot to restore
    on_device = ctx.skip_on_device and (fused or bool(optimizer.state))
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
                distill_p = None
                if ctx.teachers:  # on the student's own augmented batch
                    with torch.no_grad():
                        distill_p = losses.teacher_probs([t.logits(x) for t in ctx.teachers],
                                                         ctx.recipe.distill_temperature)
                terms = loss_terms(ctx.recipe, out, targets, dominant, teacher_logits=teacher_logits,
                                   mt_ramp=mt_ramp, distill_p=distill_p)
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
        _step_unless(optimizer, scaler, bad, fused)
        totals = {k: torch.where(bad > 0, torch.zeros_like(v), v) for k, v in totals.items()}
        totals["nonfinite"] = bad
        return totals
    scaler.step(optimizer)
    scaler.update()
    return totals


def _step_unless(optimizer, scaler, bad: torch.Tensor, fused: bool) -> None:
    """The optimiser step, changing nothing where ``bad`` (a device flag) is 1, with no host read."""
    if scaler.is_enabled():  # fp16: the loss's flag joins GradScaler's overflow check
        scaler.unscale_(optimizer)
        found = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]  # noqa: SLF001
        for f in found.values():
            torch.maximum(f, bad.to(f.device), out=f)
        if fused:  # GradScaler hands found_inf to the fused kernel without reading it
            scaler.step(optimizer)
        else:  # GradScaler would read found_inf on the host to decide
            masked_step(optimizer, torch.stack([f.to(bad.device) for f in found.values()]).amax())
        scaler.update()  # backs the scale off on any flagged step, as for an overflow
    elif fused:
        optimizer.found_inf = bad  # read by torch's fused kernels: 1 = change nothing
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    else:
        masked_step(optimizer, bad)


def masked_step(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """``optimizer.step()``, then every parameter and state tensor put back as it was when ``bad``
    (a one-element device tensor) is 1: a skipped step decided on the device, for optimisers
    without a fused kernel (RMSpropTF). The tensors are snapshotted flat, one ``cat`` per dtype,
    and selected with one ``where``: a handful of kernels whatever the number of parameters,
    exact in both cases (a NaN step's values are never mixed in). Needs the optimiser's state
    to exist (not its first step) and to be updated in place, as torch's and timm's are.
    Tensors on another device than ``bad`` are left as stepped: the step counters torch and timm
    keep on the CPU (restoring them would read ``bad`` on the host); RMSpropTF's update never
    reads its counter."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    tensors = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    tensors += [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    for t in (t for t in tensors if t.device == bad.device):
        groups.setdefault((t.device, t.dtype), []).append(t)
    with torch.no_grad():
        saved = {k: torch.cat([t.reshape(-1) for t in ts]) for k, ts in groups.items()}
    optimizer.step()
    with torch.no_grad():
        for k, ts in groups.items():
            kept = torch.where(bad > 0, saved[k], torch.cat([t.reshape(-1) for t in ts]))
            torch._foreach_copy_(ts, [c.view(t.shape) for c, t in zip(kept.split([t.numel() for t in ts]), ts)])


def start_momentum(optimizer: torch.optim.Optimizer) -> None:
    """SGD's momentum buffers as zeros before its first step (dampening 0: the same update as
    torch's first step, which copies the gradient in). A fused kernel told to skip that first
    step would otherwise leave the buffers it made with ``empty_like`` unset for good."""
    if optimizer.state or not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("momentum", 0) and not group.get("dampening", 0):
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def skips_on_device(recipe: Recipe, device: torch.device, amp) -> bool:
    """Whether a NaN/inf step is skipped without a host read (see :func:`train_step`): always on
    CUDA, where a host read stalls the queue of kernels; on the CPU, where it costs nothing,
    with a fused optimiser and no fp16 GradScaler only."""
    if device.type == "cuda":
        return True
    return optimizer_impl(recipe, device) == "fused" and amp != torch.float16
