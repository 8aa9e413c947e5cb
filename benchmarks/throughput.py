"""Throughput of loaders, model steps and real training steps (images per second).

    python benchmarks/throughput.py --source data/imagenet-sample --loader ffcv,torchvision
    python benchmarks/throughput.py --data data/tiny-vipriors/train.beton --mode model,e2e --model tresnet_xl --res 224

``--source`` is any folder of ImageNet JPEGs at their original sizes, e.g. the first 1,000
files of ImageNet-2012 val copied flat into ``data/imagenet-sample`` (flat files are dealt
over ``--source-classes`` folders); it is packed with ``fastvip pack`` defaults when ``--data``
is omitted. ``data/tiny-vipriors/train.beton`` is the proxy packed as in
``benchmarks/accuracy.py``.

Modes:
  loader  iterate the loader, including the move to the training device;
  model   synthetic uint8 batches already on the device: forward, backward, optimiser step,
          with the recipe's settings (AMP, channels-last, compile);
  e2e     the same training step fed by the loader.
Loaders are timed in alternating passes after a warm-up pass each; the median of the
passes is reported with its spread and the system CPU utilisation. ``torchvision`` is
DESIGN's fixed baseline over the original JPEG folder (``--source``); ``ffcv-stock`` is a
bare FFCV ``Loader`` on the same file, to show what fastvip's layer costs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastvip import atomic, recipe as recipe_mod  # noqa: E402
from fastvip.console import Console  # noqa: E402
from fastvip.errors import FastvipError  # noqa: E402
from fastvip.methods.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from fastvip.methods.model import amp_dtype, amp_name, autocast, resolve_device, use_channels_last  # noqa: E402
from fastvip.train import OPTIMIZER_IMPL_KWARGS, optimizer_impl  # noqa: E402


# ------------------------------------------------------------------ data

def class_folder_view(src: Path, classes: int, workdir: Path) -> Path:
    """``src`` as an ImageFolder tree: as is if it has class folders, else files spread over
    ``classes`` folders (symlinks, sorted names dealt round-robin)."""
    if any(p.is_dir() for p in src.iterdir()):
        return src
    view = workdir / "source"
    files = sorted(p for p in src.iterdir() if p.is_file())
    for i, f in enumerate(files):
        folder = view / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(f.resolve(), folder / f.name)
    return view


def torchvision_loader(root: Path, batch_size: int, res: int, device, workers: int):
    """DESIGN's fixed baseline: ImageFolder (PIL) + RandomResizedCrop + flip + PILToTensor."""
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.RandomResizedCrop(res), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    ds = datasets.ImageFolder(os.fspath(root), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                     num_workers=workers, persistent_workers=True,
                                     pin_memory=device.type == "cuda")

    class Wrapped:
        num_samples = len(ds)

        def __len__(self):
            return len(dl)

        def set_epoch(self, epoch, image_size=None, start_batch=0):
            pass

        def __iter__(self):
            for x, y in dl:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return Wrapped()


def ffcv_stock_loader(path: Path, batch_size: int, res: int, device, workers: int):
    """A bare FFCV Loader with FFCV's own decoder, flip and random order (no fastvip layer)."""
    from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage
    nb = device.type == "cuda"
    loader = Loader(os.fspath(path), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM,
                    drop_last=True, os_cache=True, seed=0, pipelines={
                        "image": [RandomResizedCropRGBImageDecoder((res, res)), RandomHorizontalFlip(),
                                  ToTensor(), ToDevice(device, non_blocking=nb), ToTorchImage()],
                        "label": [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=nb)],
                        "id": None})
    loader.set_epoch = lambda epoch, image_size=None, start_batch=0: None
    loader.num_samples = len(loader.indices)
    return loader


def make_loader(name: str, args, device, data: Path, source: Path | None):
    from fastvip.loaders import build_loader
    if name == "torchvision":
        if source is None:
            raise FastvipError("--loader torchvision needs --source (the original JPEG folder)")
        return torchvision_loader(source, args.batch_size, args.res, device, args.workers)
    if name == "ffcv-stock":
        return ffcv_stock_loader(data, args.batch_size, args.res, device, args.workers)
    if name == "dali-parallel":  # the DALI source in worker processes instead of the calling thread
        from fastvip.loaders.dali import DALILoader
        return DALILoader(data, train=True, batch_size=args.batch_size, image_size=args.res, device=device,
                          workers=args.workers, source_workers=args.workers)
    t0 = time.perf_counter()
    # resident: the recipe's resident_storage (--set resident_storage=jpeg); resident-jpeg and
    # resident-pixels name one, so both storages time side by side in one run
    storage = {"resident-jpeg": "jpeg", "resident-pixels": "pixels"}.get(
        name, getattr(args, "resident_storage", "pixels"))
    kind = "resident" if name.startswith("resident") else name
    loader = build_loader(kind, data, train=True, batch_size=args.batch_size, image_size=args.res,
                          device=device, seed=0, workers=args.workers, resident_storage=storage)
    if kind == "resident":  # the one decode pass (pixels) or copy of the bytes (jpeg), paid once per run
        loader.setup_s = time.perf_counter() - t0
    return loader


# ------------------------------------------------------------------ timing

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's threads and its live worker processes."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that just exited
            pass
    return total


def time_pass(loader, device, epochs: range, step=None) -> tuple[int, float]:
    """Images and seconds for one pass of ``epochs`` (``step`` consumes each batch: e2e mode)."""
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for epoch in epochs:
        loader.set_epoch(epoch)
        for images, labels in loader:
            if step is not None:
                step(images, labels)
            n += len(labels)
    _sync(device)
    return n, time.perf_counter() - t0


def bench_loaders(loaders: dict, device, passes: int, step=None, mode="loader", pass_epochs: int = 1) -> list[dict]:
    """Warm-up pass each, then ``passes`` alternating passes (order reversed every other pass),
    each of ``pass_epochs`` epochs (a small file on a fast GPU needs several to time)."""
    for loader in loaders.values():
        time_pass(loader, device, range(1), step=step)
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    cpu_per_k: dict[str, list[float]] = {k: [] for k in loaders}
    images: dict[str, int] = {}
    for p in range(passes):
        names = list(loaders) if p % 2 == 0 else list(reversed(loaders))
        for name in names:
            psutil.cpu_percent(interval=None)
            c0 = cpu_seconds()
            n, dt = time_pass(loaders[name], device, range(1 + p * pass_epochs, 1 + (p + 1) * pass_epochs), step=step)
            cpu_per_k[name].append((cpu_seconds() - c0) / n * 1000)
            cpu[name].append(psutil.cpu_percent(interval=None))
            rates[name].append(n / dt)
            images[name] = n
    return [{"loader": name, "mode": mode, "img_per_s": statistics.median(r), "img_per_s_min": min(r),
             "img_per_s_max": max(r), "passes": len(r), "n_images": images[name],
             "cpu_util_percent": statistics.median(cpu[name]),
             "cpu_s_per_1k": statistics.median(cpu_per_k[name]),
             "setup_s": getattr(loaders[name], "setup_s", None)} for name, r in rates.items()]


def training_step(recipe, device, num_classes: int):
    """The step ``fastvip run`` takes (augmentation, losses, EMA / Mean Teacher, the device-side
    NaN/inf skip included), built by the run's own set-up on a fresh model; returns a callable
    ``step(images, labels)``."""
    from fastvip.train import build_trainer, train_step
    t = build_trainer(recipe, device, num_classes, fresh=False)  # no init_from: timing only
    t.model.train()
    count = iter(range(1 << 62))

    def step(images, labels):
        n = next(count)
        terms = train_step(t.forward, t.optimizer, t.scaler, [(images, labels % num_classes)], t.ctx, n)
        if t.ema is not None and terms is not None:
            t.ema.update(t.model, n, skip=terms.get("nonfinite"))
    step.model = t.model  # for tests comparing the steps' weights
    step.teachers = len(t.ctx.teachers)
    return step


def teacher_rows(recipe, device, num_classes: int, steps: int, warmup: int, counts: str, folder: Path) -> list[dict]:
    """The recipe's step with each count of distillation teachers in ``counts`` ("0,1,3"), timed in
    alternation; ``x_no_teachers`` = img/s against the first count's. The teachers are copies of
    the recipe's own model at its initialisation, saved as checkpoints in ``folder`` (their
    weights do not change the cost), loaded as ``fastvip run`` loads teachers."""
    from fastvip.methods.model import build_model, save_checkpoint
    try:
        ns = [int(n) for n in counts.split(",") if n]
    except ValueError:
        raise FastvipError(f"--teachers expects counts like 0,1,3, got {counts!r}") from None
    if len(ns) < 2 or ns[0] != 0 or len(set(ns)) != len(ns) or min(ns) < 0:
        raise FastvipError(f"--teachers expects 0, then other distinct counts (0,1,3), got {counts!r}")
    base = dataclasses.replace(recipe, teachers=(), distill_weight=0.0)
    ckpt = {"inference": build_model(base, num_classes).state_dict(), "weights": "raw", "epoch": 0,
            "recipe": base.to_dict(), "classes": [str(i) for i in range(num_classes)]}
    files = [folder / f"teacher{i}.pt" for i in range(max(ns))]
    for f in files:
        save_checkpoint(f, ckpt)
    weight = recipe.distill_weight or 0.5
    configs = {f"teachers={n}": (training_step, dataclasses.replace(
        base, teachers=tuple(map(str, files[:n])), distill_weight=weight if n else 0.0).validate()) for n in ns}
    rows = bench_steps(configs, device, num_classes, steps, warmup)
    for r in rows:
        r["x_no_teachers"] = r["img_per_s"] / rows[0]["img_per_s"]
    return rows


def timm_train_step(recipe, device, num_classes: int):
    """The step of timm's ``train.py`` (``train_one_epoch``) at the recipe's model, batch,
    resolution, precision, optimiser (and its kernels), memory format and compile setting:
    its prefetcher's normalisation on the device, autocast forward + loss, ``loss.item()``
    (train.py logs every step's loss when not distributed), zero_grad, backward (NativeScaler
    for fp16), step, ModelEmaV3. Mixing happens in timm's collate on the CPU, so targets
    come ready."""
    import timm
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3, NativeScaler
    amp = amp_dtype(recipe.amp, device)
    channels_last, _ = use_channels_last(recipe, device)
    kwargs = {"drop_path_rate": recipe.drop_path_rate} if recipe.drop_path_rate else {}
    model = timm.create_model(recipe.model, pretrained=False, num_classes=num_classes, drop_rate=recipe.drop_rate,
                              **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    name = {"sgd": "nesterov" if recipe.nesterov else "momentum"}.get(recipe.optimizer, recipe.optimizer)
    # the same kernels as fastvip's step (train.py takes them through --opt-kwargs)
    optimizer = create_optimizer_v2(model, opt=name, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
                                    momentum=recipe.momentum,
                                    **({"eps": recipe.opt_eps} if recipe.opt_eps is not None else {}),
                                    **OPTIMIZER_IMPL_KWARGS.get(optimizer_impl(recipe, device), {}))
    scaler = NativeScaler() if amp == torch.float16 else None
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.uses_ema else None
    forward = torch.compile(model) if recipe.compile else model
    mixing = recipe.mix_prob > 0
    loss_fn = SoftTargetCrossEntropy() if mixing else \
        LabelSmoothingCrossEntropy(recipe.label_smoothing) if recipe.label_smoothing else torch.nn.CrossEntropyLoss()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    count = iter(range(1 << 62))

    def step(images, labels):
        target = labels % num_classes
        if mixing:
            target = torch.nn.functional.one_hot(target, num_classes).float()
        x = images.float().sub_(mean).div_(std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            loss = loss_fn(forward(x), target)
        loss.item()
        optimizer.zero_grad()
        if scaler is not None:
            scaler(loss, optimizer)
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update(model, step=next(count))
    step.model = model
    return step


def plain(recipe):
    """The recipe's model step alone: same model, batch, resolution, precision, optimiser,
    memory format and compile setting, without fastvip's device augmentation, extra views,
    heads or loss terms (timm's train.py does its augmentation on the CPU)."""
    return dataclasses.replace(recipe, auto_augment="none", random_erasing=0.0, mix_prob=0.0, views=1, loss="ce",
                               triplet_weight=0.0, arcface=False, cr_weight=0.0, mt_weight=0.0, aux_weight=0.0,
                               fusion_weight=0.0, ema=False)


def bench_steps(configs: dict, device, num_classes: int, steps: int, warmup: int, repeats: int = 3) -> list[dict]:
    """Time training steps on one synthetic uint8 batch already on the device.

    ``configs`` maps a row name to ``(make_step, recipe)``; all share the first recipe's batch
    and resolution. Every step is built and warmed up first (``warmup`` steps: compile, cudnn
    autotune), then ``repeats`` rounds time ``steps`` steps of each in turn, the order reversed
    every other round, so drift (clocks, other load) falls on all of them alike.
    """
    first = next(iter(configs.values()))[1]
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (first.batch_size, 3, first.image_size, first.image_size),
                           dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (first.batch_size,), generator=gen).to(device)
    built = {name: make(recipe, device, num_classes) for name, (make, recipe) in configs.items()}
    for step in built.values():
        for _ in range(warmup):
            step(images, labels)
    rates: dict[str, list[float]] = {name: [] for name in built}
    for r in range(repeats):
        for name in (list(built) if r % 2 == 0 else list(reversed(built))):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                built[name](images, labels)
            _sync(device)
            rates[name].append(steps * first.batch_size / (time.perf_counter() - t0))
    return [dict({"loader": "synthetic", "mode": "model", "step": name, "img_per_s": statistics.median(r),
                  "img_per_s_min": min(r), "img_per_s_max": max(r), "passes": repeats,
                  "n_images": steps * first.batch_size, "teachers": getattr(built[name], "teachers", 0)},
                 **step_settings(configs[name][1], device))
            for name, r in rates.items()]


def step_settings(recipe, device) -> dict:
    """What a model or e2e row was measured with, resolved for ``device``."""
    return {"model": recipe.model, "amp": amp_name(amp_dtype(recipe.amp, device)),
            "channels_last": use_channels_last(recipe, device)[0], "compile": recipe.compile,
            "optimizer": recipe.optimizer, "optimizer_impl": optimizer_impl(recipe, device)}


def model_rows(recipe, device, num_classes: int, steps: int, warmup: int, vary: str | None = None) -> list[dict]:
    """fastvip's step as the recipe trains, its plain model step when that differs, and timm's
    train.py step at the plain settings; ``x_timm`` = plain fastvip / timm.

    With ``vary="KEY=A,B"`` instead: the recipe's step once per value of that field, timed in
    alternation (fused vs foreach, compile on/off, channels-last on/off in one run)."""
    if vary:
        key, _, values = vary.partition("=")
        configs = {}
        for v in filter(None, values.split(",")):
            changed = dataclasses.replace(recipe, **recipe_mod.parse_overrides([f"{key}={v}"]))
            configs[f"{key}={v}"] = (training_step, changed.validate())
        if len(configs) < 2:
            raise FastvipError(f"--vary expects KEY=A,B[,...] with at least two values, got {vary!r}")
        return bench_steps(configs, device, num_classes, steps, warmup)
    base = plain(recipe)
    configs = {"fastvip": (training_step, recipe)}
    if base != recipe:
        configs["fastvip-plain"] = (training_step, base)
    configs["timm-train.py"] = (timm_train_step, base)
    rows = bench_steps(configs, device, num_classes, steps, warmup)
    rows[-2]["x_timm"] = rows[-2]["img_per_s"] / rows[-1]["img_per_s"]
    return rows


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="packed .beton (packed from --source when omitted)")
    ap.add_argument("--source", type=Path, help="original JPEG folder (class folders, or flat files)")
    ap.add_argument("--source-classes", type=int, default=10, help="classes to spread a flat --source over")
    ap.add_argument("--loader", default="ffcv,torchvision",
                    help="comma list: ffcv, ffcv-stock, dali, dali-parallel, resident (resident_storage of "
                    "--set), resident-pixels, resident-jpeg, torchvision")
    ap.add_argument("--mode", default="loader", help="comma list: loader, model, e2e")
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "tresnet_xl.py",
                    help="recipe whose training settings model/e2e modes use")
    ap.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", default=None, help="timm model (default: the recipe's)")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="loader threads / processes")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per loader (median reported)")
    ap.add_argument("--pass-epochs", type=int, default=1, help="epochs of the file per timed pass")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per repeat in model mode")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first in model mode (compile, autotune)")
    ap.add_argument("--vary", metavar="KEY=A,B", help="model mode: time the step once per value of this recipe "
                    "field, in alternation (e.g. optimizer_impl=fused,foreach or compile=false,true)")
    ap.add_argument("--teachers", metavar="N,N", help="model mode: time the recipe's step with each count of "
                    "distillation teachers (e.g. 0,1,3), in alternation, instead of the usual rows")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, help="write the results here (a list of objects)")
    args = ap.parse_args(argv)
    try:
        results = run(args)
    except FastvipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(results)
    if args.json:
        atomic.write_json(args.json, results)
    return 0


def run(args) -> list[dict]:
    if args.passes < 3:
        raise FastvipError("--passes must be >= 3 (a median of at least three)")
    if args.pass_epochs < 1:
        raise FastvipError("--pass-epochs must be >= 1")
    if args.teachers and args.vary:
        raise FastvipError("--teachers and --vary are two ways to vary the step: give one")
    device = resolve_device(args.device)
    modes = [m for m in args.mode.split(",") if m]
    if set(modes) - {"loader", "model", "e2e"}:
        raise FastvipError(f"unknown mode in {args.mode!r}")
    names = [n for n in args.loader.split(",") if n]
    overrides = [pair for group in args.set for pair in group]
    recipe = recipe_mod.resolve(args.recipe, overrides)
    args.resident_storage = recipe.resident_storage  # what --loader resident stores
    recipe = dataclasses.replace(recipe, image_size=args.res, batch_size=args.batch_size,
                                 model=args.model or recipe.model, device=device.type)
    with tempfile.TemporaryDirectory(prefix="fastvip-bench-") as tmp:
        tmp = Path(tmp)
        source = class_folder_view(args.source, args.source_classes, tmp) if args.source else None
        data = args.data
        if data is None and any(n != "torchvision" for n in names) or data is None and "e2e" in modes:
            if source is None:
                raise FastvipError("give --data, or --source to pack")
            from fastvip.data.pack import pack
            data = tmp / "bench.beton"
            pack(source, data, console=Console(quiet=True))
        common = {"batch_size": args.batch_size, "res": args.res, "device": str(device)}
        results = []
        if "loader" in modes:
            loaders = {n: make_loader(n, args, device, data, source) for n in names}
            results += bench_loaders(loaders, device, args.passes, pass_epochs=args.pass_epochs)
        num_classes = 1000
        if "model" in modes and args.teachers:
            results += teacher_rows(recipe, device, num_classes, args.steps, args.warmup, args.teachers, tmp)
        elif "model" in modes:
            results += model_rows(recipe, device, num_classes, args.steps, warmup=args.warmup, vary=args.vary)
        if "e2e" in modes:
            for n in names:
                loader = make_loader(n, args, device, data, source)
                step = training_step(recipe, device, num_classes)
                results += bench_loaders({n: loader}, device, args.passes, step=step, mode="e2e",
                                         pass_epochs=args.pass_epochs)
        for r in results:
            r.update(common)
            if r["mode"] == "e2e":
                r.update(step_settings(recipe, device))
            if device.type == "cuda":
                r["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        model_rate = next((r["img_per_s"] for r in results if r.get("step") == "fastvip"), None)
        for r in results:
            if r["mode"] == "e2e" and model_rate:
                r["e2e_over_model"] = r["img_per_s"] / model_rate
        base = next((r["img_per_s"] for r in results if r["loader"] == "torchvision" and r["mode"] == "loader"), None)
        for r in results:
            if base and r["mode"] == "loader":
                r["x_baseline"] = r["img_per_s"] / base
        return results


def report(results: list[dict]) -> None:
    from rich.console import Console as RichConsole
    from rich.table import Table
    cols = ["loader", "mode", "step", "model", "img_per_s", "spread", "x_baseline", "e2e_over_model", "x_timm",
            "cpu_util_percent", "cpu_s_per_1k", "setup_s", "n_images", "batch_size", "res", "device", "peak_gpu_mem_mb"]
    rows = [dict(r, spread=f"{r['img_per_s_min']:,.0f}-{r['img_per_s_max']:,.0f}") for r in results]
    cols = [c for c in cols if any(row.get(c) is not None for row in rows)]  # drop empty columns
    table = Table(title="throughput (median of passes)")
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in cols])
    # a pipe or log file gets the whole table, not columns squeezed to 80 characters
    RichConsole(soft_wrap=True, width=None if sys.stdout.isatty() else 240).print(table)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
