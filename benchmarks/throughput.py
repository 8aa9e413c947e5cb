"""Throughput of loaders, model steps and real training steps (images per second).

    python benchmarks/throughput.py --source ../shared/data/imagenet-sample --loader ffcv,torchvision
    python benchmarks/throughput.py --data train.beton --mode model,e2e --model tresnet_xl --res 224

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
from fastvip.model import amp_dtype, build_model, resolve_device  # noqa: E402


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

        def set_epoch(self, epoch):
            pass

        def __iter__(self):
            for x, y in dl:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return Wrapped()


def ffcv_stock_loader(path: Path, batch_size: int, res: int, device, workers: int):
    """A bare FFCV Loader with FFCV's own decoder, flip and random order (no fastvip layer)."""
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
    loader.set_epoch = lambda epoch: None
    loader.num_samples = len(loader.indices)
    return loader


def make_loader(name: str, args, device, data: Path, source: Path | None):
    from loaders import build_loader
    if name == "torchvision":
        if source is None:
            raise FastvipError("--loader torchvision needs --source (the original JPEG folder)")
        return torchvision_loader(source, args.batch_size, args.res, device, args.workers)
    if name == "ffcv-stock":
        return ffcv_stock_loader(data, args.batch_size, args.res, device, args.workers)
    if name == "dali-parallel":  # the DALI source in worker processes instead of the calling thread
        from loaders.dali import DALILoader
        return DALILoader(data, train=True, batch_size=args.batch_size, image_size=args.res, device=device,
                          workers=args.workers, source_workers=args.workers)
    return build_loader(name, data, train=True, batch_size=args.batch_size, image_size=args.res,
                        device=device, seed=0, workers=args.workers)


# ------------------------------------------------------------------ timing

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pass(loader, device, epoch: int, step=None) -> tuple[int, float]:
    """Images and seconds for one full pass (``step`` consumes each batch: e2e mode)."""
    loader.set_epoch(epoch)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for images, labels in loader:
        if step is not None:
            step(images, labels)
        n += len(labels)
    _sync(device)
    return n, time.perf_counter() - t0


def bench_loaders(loaders: dict, device, passes: int, step=None, mode="loader") -> list[dict]:
    """Warm-up pass each, then ``passes`` alternating passes (order reversed every other pass)."""
    for loader in loaders.values():
        time_pass(loader, device, epoch=0, step=step)
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    images: dict[str, int] = {}
    for p in range(passes):
        names = list(loaders) if p % 2 == 0 else list(reversed(loaders))
        for name in names:
            psutil.cpu_percent(interval=None)
            n, dt = time_pass(loaders[name], device, epoch=p + 1, step=step)
            cpu[name].append(psutil.cpu_percent(interval=None))
            rates[name].append(n / dt)
            images[name] = n
    return [{"loader": name, "mode": mode, "img_per_s": statistics.median(r), "img_per_s_min": min(r),
             "img_per_s_max": max(r), "passes": len(r), "n_images": images[name],
             "cpu_util_percent": statistics.median(cpu[name])} for name, r in rates.items()]


def training_step(recipe, device, num_classes: int):
    """The exact step ``fastvip run`` takes, on a fresh model (returns a callable)."""
    from fastvip.train import StepContext, _optimizer, train_step
    amp = amp_dtype(recipe.amp, device)
    model = build_model(recipe, num_classes).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = _optimizer(model, recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    forward = torch.compile(model) if recipe.compile else model
    ctx = StepContext(recipe, device, amp, num_classes)
    count = iter(range(1 << 62))

    def step(images, labels):  # the recipe's augmentation and losses included
        train_step(forward, optimizer, scaler, [(images, labels % num_classes)], ctx, next(count))
    return step


def bench_model(recipe, device, num_classes: int, steps: int, warmup: int) -> dict:
    step = training_step(recipe, device, num_classes)
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (recipe.batch_size, 3, recipe.image_size, recipe.image_size),
                           dtype=torch.uint8, generator=gen).to(device)
    if recipe.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (recipe.batch_size,), generator=gen).to(device)
    for _ in range(warmup):
        step(images, labels)
    rates = []
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(images, labels)
        _sync(device)
        rates.append(steps * recipe.batch_size / (time.perf_counter() - t0))
    return {"loader": "synthetic", "mode": "model", "img_per_s": statistics.median(rates),
            "img_per_s_min": min(rates), "img_per_s_max": max(rates), "passes": 3,
            "n_images": steps * recipe.batch_size}


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="packed .beton (packed from --source when omitted)")
    ap.add_argument("--source", type=Path, help="original JPEG folder (class folders, or flat files)")
    ap.add_argument("--source-classes", type=int, default=10, help="classes to spread a flat --source over")
    ap.add_argument("--loader", default="ffcv,torchvision",
                    help="comma list: ffcv, ffcv-stock, dali, dali-parallel, torchvision")
    ap.add_argument("--mode", default="loader", help="comma list: loader, model, e2e")
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "tresnet_xl.py",
                    help="recipe whose training settings model/e2e modes use")
    ap.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", default=None, help="timm model (default: the recipe's)")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="loader threads / processes")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per loader (median reported)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per repeat in model mode")
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
    device = resolve_device(args.device)
    modes = [m for m in args.mode.split(",") if m]
    if set(modes) - {"loader", "model", "e2e"}:
        raise FastvipError(f"unknown mode in {args.mode!r}")
    names = [n for n in args.loader.split(",") if n]
    overrides = [pair for group in args.set for pair in group]
    recipe = recipe_mod.resolve(args.recipe, overrides)
    recipe = dataclasses.replace(recipe, image_size=args.res, batch_size=args.batch_size,
                                 model=args.model or recipe.model, device=device.type)
    with tempfile.TemporaryDirectory(prefix="fastvip-bench-") as tmp:
        tmp = Path(tmp)
        source = class_folder_view(args.source, args.source_classes, tmp) if args.source else None
        data = args.data
        if data is None and any(n != "torchvision" for n in names) or data is None and "e2e" in modes:
            if source is None:
                raise FastvipError("give --data, or --source to pack")
            from fastvip.pack import pack
            data = tmp / "bench.beton"
            pack(source, data, console=Console(quiet=True))
        common = {"batch_size": args.batch_size, "res": args.res, "device": str(device)}
        results = []
        if "loader" in modes:
            loaders = {n: make_loader(n, args, device, data, source) for n in names}
            results += bench_loaders(loaders, device, args.passes)
        num_classes = 1000
        if "model" in modes:
            results.append(bench_model(recipe, device, num_classes, args.steps, warmup=5))
        if "e2e" in modes:
            for n in names:
                loader = make_loader(n, args, device, data, source)
                step = training_step(recipe, device, num_classes)
                results += bench_loaders({n: loader}, device, args.passes, step=step, mode="e2e")
        for r in results:
            r.update(common)
            if r["mode"] != "loader":
                r.update(model=recipe.model, amp=recipe.amp, channels_last=recipe.channels_last,
                         compile=recipe.compile)
            if device.type == "cuda":
                r["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        model_rate = next((r["img_per_s"] for r in results if r["mode"] == "model"), None)
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
    cols = ["loader", "mode", "img_per_s", "spread", "x_baseline", "e2e_over_model", "cpu_util_percent",
            "n_images", "batch_size", "res", "device", "peak_gpu_mem_mb"]
    rows = [dict(r, spread=f"{r['img_per_s_min']:,.0f}-{r['img_per_s_max']:,.0f}") for r in results]
    cols = [c for c in cols if any(row.get(c) is not None for row in rows)]  # drop empty columns
    table = Table(title="throughput (median of passes)")
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in cols])
    RichConsole(soft_wrap=True).print(table)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
