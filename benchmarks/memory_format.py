"""Measure channels-last against NCHW for every recipe model and record the choice.

    python benchmarks/memory_format.py                       # every model in recipes/, on this device
    python benchmarks/memory_format.py --models resnet50,tresnet_xl --res 160

Each model's plain training step (``throughput.py --mode model``'s ``fastvip-plain``: forward,
backward, optimiser step at the recipe's batch, resolution, precision, optimiser) is timed in
both memory formats. Channels-last is chosen only where it is faster by more than ``--margin``
(some models are much slower in it: TResNet's space-to-depth stem and anti-aliasing, ResNeSt's
split attention). The result goes into ``fastvip/memory_formats.json`` under this device type,
one model at a time (atomic writes: an interrupted sweep keeps what it measured), and
``channels_last=auto`` in a recipe follows it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import REPO, bench_steps, plain, report, training_step  # noqa: E402

from fastvip import atomic, recipe as recipe_mod  # noqa: E402
from fastvip.errors import FastvipError  # noqa: E402
from fastvip.methods.model import MEMORY_FORMATS, measured_formats, resolve_device  # noqa: E402


def recipe_models(paths: list[str]) -> dict[str, recipe_mod.Recipe]:
    """The first recipe of each distinct model (its batch, resolution and precision are used)."""
    out: dict[str, recipe_mod.Recipe] = {}
    for path in sorted(paths):
        r = recipe_mod.load_recipe(path)
        out.setdefault(r.model, r)
    return out


def fixed_size(model: str) -> int | None:
    """The input size a model only works at (Swin's windows), else None."""
    import timm
    cfg = timm.models.get_pretrained_cfg(model)
    return cfg.input_size[-1] if cfg is not None and cfg.fixed_input_size else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # platform.processor() is often empty on Linux
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"


def measure(recipe, device, steps: int, warmup: int, margin: float) -> tuple[dict, list[dict]]:
    """Both formats of one model's plain step, timed in alternation -> (table entry, result rows)."""
    configs = {f"channels_last={fmt}": (training_step, dataclasses.replace(plain(recipe), channels_last=fmt))
               for fmt in ("off", "on")}
    rows = bench_steps(configs, device, 1000, steps, warmup)  # rows carry model, amp, compile
    for row in rows:
        row.update(batch_size=recipe.batch_size, res=recipe.image_size, device=str(device))
    nchw, cl = round(rows[0]["img_per_s"], 2), round(rows[1]["img_per_s"], 2)  # the choice follows the record
    entry = {"res": recipe.image_size, "batch_size": recipe.batch_size, "amp": rows[0]["amp"],
             "compile": rows[0]["compile"],
             "nchw_img_per_s": nchw, "channels_last_img_per_s": cl,
             "channels_last": cl > nchw * (1 + margin)}
    return entry, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+",  # recipes/__init__.py is the package marker, not a recipe
                    default=sorted(f for f in glob.glob(str(REPO / "recipes" / "*.py")) if not Path(f).name.startswith("_")),
                    help="recipe files whose models are measured (default: all of recipes/)")
    ap.add_argument("--models", help="comma list: only these models")
    ap.add_argument("--res", type=int, help="resolution for all models (default: each recipe's)")
    ap.add_argument("--batch-size", type=int, help="batch for all models (default: each recipe's)")
    ap.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for every model (e.g. amp=off compile=true)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat (median of 3 repeats)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--margin", type=float, default=0.03,
                    help="channels-last must be faster by more than this fraction to be chosen")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--table", type=Path, default=MEMORY_FORMATS, help="the table to update")
    args = ap.parse_args(argv)
    try:
        rows = run(args)
    except FastvipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(rows)
    return 0


def run(args) -> list[dict]:
    device = resolve_device(args.device)
    overrides = recipe_mod.parse_overrides([p for group in args.set for p in group])
    models = recipe_models(args.recipes)
    if args.models:
        wanted = [m for m in args.models.split(",") if m]
        models = {m: models.get(m, recipe_mod.Recipe(model=m)) for m in wanted}
    if not models:
        raise FastvipError("no models to measure (no recipes given?)")
    table = measured_formats(args.table)
    rows = []
    for model, recipe in models.items():
        recipe = dataclasses.replace(recipe, **overrides)
        recipe = dataclasses.replace(recipe, image_size=fixed_size(model) or args.res or recipe.image_size,
                                     batch_size=args.batch_size or recipe.batch_size, device=device.type).validate()
        entry, measured = measure(recipe, device, args.steps, args.warmup, args.margin)
        rows += measured
        entry.update(device=device_name(device), torch=torch.__version__, margin=args.margin,
                     date=datetime.date.today().isoformat())
        table.setdefault(device.type, {}).setdefault("models", {})[model] = entry
        atomic.write_json(args.table, table)
        print(f"{model}: channels-last {entry['channels_last_img_per_s']:,.1f} vs NCHW "
              f"{entry['nchw_img_per_s']:,.1f} img/s -> {'on' if entry['channels_last'] else 'off'}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
