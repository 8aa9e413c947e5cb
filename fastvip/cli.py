"""The ``fastvip`` command line (see DESIGN.md, "Commands")."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastvip.errors import FastvipError

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--quiet", action="store_true", help="no progress output (errors and results still print)")


def _console(args):
    from fastvip.console import Console
    return Console(quiet=args.quiet)


def cmd_pack(args) -> int:
    from fastvip.data.pack import pack
    result = pack(args.src, args.out, max_side=args.max_side, quality=args.quality, workers=args.workers,
                  force=args.force, strict=args.strict, console=_console(args))
    return 0 if result.num_images else 1


def cmd_run(args) -> int:
    from fastvip import recipe as recipe_mod
    from fastvip.distributed import launched_by_torchrun
    recipe = recipe_mod.resolve(args.recipe, _flatten(args.set))
    out = args.out or recipe.out or os.path.join("runs", Path(args.recipe).stem)
    if args.nproc and args.nproc > 1 and not launched_by_torchrun():
        return _torchrun(args, out)
    from fastvip.train.stop import EXIT_TEMPFAIL, RunStopped
    from fastvip.train import run
    try:
        run(recipe, out, resume=args.resume, console=_console(args), stop_after=args.stop_after)
    except RunStopped as e:
        print(f"fastvip run: {e}; continue with: fastvip run {args.recipe} --out {out} --resume", file=sys.stderr)
        return EXIT_TEMPFAIL
    return 0


def _torchrun(args, out: str) -> int:
    """``fastvip run --nproc N``: the same command under PyTorch's torchrun, N processes on this machine."""
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "fastvip", "run", args.recipe, "--out", out]
    for group in args.set or []:
        cmd += ["--set", *group]
    cmd += [flag for flag, on in (("--resume", args.resume), ("--quiet", args.quiet), ("--debug", args.debug))
            if on]
    if args.stop_after:
        cmd += ["--stop-after", str(args.stop_after)]
    from fastvip.train.stop import EXIT_TEMPFAIL, forward_to_workers, stopped_run
    proc = subprocess.Popen(cmd)
    with forward_to_workers(proc):
        rc = proc.wait()
    # workers that stopped for a signal exit 75 each, which torchrun reports as a failure
    return EXIT_TEMPFAIL if rc and stopped_run(Path(out)) else rc


def cmd_split(args) -> int:
    from fastvip.data.split import split
    if args.pickles and (args.per_class is not None or args.seed is not None):
        raise FastvipError("--per-class and --seed choose a random subset; they do not apply with --pickles")
    split(args.root, args.out, pickles=args.pickles,
          per_class=50 if args.per_class is None else args.per_class,
          seed=0 if args.seed is None else args.seed, test_labels=args.test_labels, copy=args.copy,
          force=args.force, allow_missing=args.allow_missing, console=_console(args))
    return 0


def cmd_predict(args) -> int:
    from fastvip.infer.predict import predict
    console = _console(args)
    r = predict(args.run, args.data, weights=args.weights, tta=args.tta, out=args.out,
                submission=args.submission, batch_size=args.batch_size, scales=args.scales,
                tencrop_size=args.tencrop_size, size=args.size, fusion=args.fusion, console=console)
    if r["top1"] is not None:
        console.print(f"top1 {r['top1']:.2f}% on {r['n']} images")
    for key in ("out", "submission"):
        if r.get(key):
            console.print(f"wrote {r[key]}")
    return 0


def cmd_export(args) -> int:
    from fastvip.infer.export import export
    console = _console(args)
    r = export(args.run, args.out, weights=args.weights, force=args.force, console=console)
    console.print(f"wrote {r['out']}")
    return 0


def cmd_ensemble(args) -> int:
    from fastvip.infer.predict import ensemble
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise FastvipError(f"--weights expects comma-separated numbers, got {args.weights!r}") from None
    r = ensemble(args.probs, weights=weights, submission=args.submission, out=args.out)
    if r["top1"] is not None:
        print(f"top1 {r['top1']:.2f}% on {r['n']} images (ensemble of {r['files']})")
    print(f"wrote {args.submission}")
    return 0


def cmd_score(args) -> int:
    from fastvip.infer.predict import score
    r = score(args.submission, args.labels)
    note = f" ({r['missing']} labelled ids missing from the submission)" if r["missing"] else ""
    print(f"top1 {r['top1']:.2f}% on {r['n']} images{note}")
    return 0


def cmd_plot(args) -> int:
    from fastvip.train.plot import plot_runs
    out = Path(args.out) if args.out else Path(args.runs[0]) / "plots" / "curves.png"
    plot_runs(args.runs, out)
    print(f"wrote {out}")
    return 0


def cmd_show(args) -> int:
    from fastvip import recipe as recipe_mod
    print(recipe_mod.resolve(args.recipe, _flatten(args.set)).to_text(), end="")
    return 0


def cmd_verify(args) -> int:
    import json
    from fastvip.verify import verify
    report = verify(args.paths, decode=args.decode, add_checksums=args.add_checksums, console=_console(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.notes:
            print(line)
        for line in report.problems:
            print(line, file=sys.stderr)
        print(f"verify: {len(report.checked)} checked, {len(report.problems)} problems")
    return 1 if report.problems else 0


def cmd_recipes(args) -> int:
    from fastvip.recipe import recipe_description
    from fastvip.recipe import recipes_dir
    folder = Path(args.dir) if args.dir else recipes_dir()
    files = sorted(folder.glob("*.py")) if folder.is_dir() else []
    files = [f for f in files if not f.name.startswith("_")]
    if not files:
        raise FastvipError(f"no recipe files in {folder}")
    width = max(len(f.name) for f in files)
    for f in files:
        print(f"{f.name:<{width}}  {recipe_description(f)}")
    return 0


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the empty ones of flags and optional paths."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:  # not 0
            return action.help
        return super()._get_help_string(action)


class _RawEpilog(_Defaults, argparse.RawDescriptionHelpFormatter):
    """Option defaults, and the recipe-field table printed as laid out."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 8:
        raise argparse.ArgumentTypeError("scales must be integers >= 8")
    return values


def _flatten(sets) -> list[str]:
    return [pair for group in (sets or []) for pair in group]


def _recipe_fields_epilog() -> str:
    from fastvip.recipe import field_help
    rows = field_help()
    width = max(len(f"{n} ({t}, {d})") for n, t, d, _ in rows)
    lines = ["recipe fields (override with --set key=value; defaults as in fastvip.recipe.Recipe):"]
    lines += [f"  {f'{n} ({t}, {d})':<{width}}  {c}" for n, t, d, c in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvip", formatter_class=_Defaults,
                                     description="Train image classifiers from scratch on small data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_pack(sub)
    _add_run(sub)
    _add_split(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_ensemble(sub)
    _add_score(sub)
    _add_show(sub)
    _add_plot(sub)
    _add_recipes(sub)
    _add_verify(sub)
    from fastvip.tune import add_parser as add_tune  # optuna itself is imported when tune runs
    add_tune(sub, formatter_class=_Defaults)
    return parser


def _add_set(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE ...`` (repeatable) recipe overrides: ``run`` and ``show``."""
    p.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE", help=help)


def _add_weights(p: argparse.ArgumentParser, help: str) -> None:
    """``--weights best|last``, which checkpoint of a run: ``predict`` and ``export``."""
    p.add_argument("--weights", choices=("best", "last"), default="best", help=help)


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", formatter_class=_Defaults, help="pack an image folder into an FFCV .beton")
    p.add_argument("src", help="class folders (labelled), or only images / only imgs/ (unlabelled)")
    p.add_argument("out", help="output .beton (a .beton.meta.json sidecar is written beside it)")
    p.add_argument("--max-side", type=int, default=512, help="cap on the longer side in pixels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality for re-encoded images")
    p.add_argument("--workers", type=int, default=0, help="transcode processes; 0 = all cores")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--strict", action="store_true", help="fail instead of skipping unreadable images")
    _common(p)
    p.set_defaults(func=cmd_pack)


def _add_run(sub) -> None:
    p = sub.add_parser("run", formatter_class=_RawEpilog, help="train a recipe", epilog=_recipe_fields_epilog())
    p.add_argument("recipe", help="recipe file (recipes/*.py)")
    _add_set(p, help="override recipe fields (type-checked)")
    p.add_argument("--out", default=None, help="run directory (default: recipe.out or runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="train with N processes on this machine: runs the command under torchrun (DDP)")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs (the schedule still spans all); continue with --resume")
    _common(p)
    p.set_defaults(func=cmd_run)


def _add_split(sub) -> None:
    p = sub.add_parser("split", formatter_class=_Defaults,
                       help="make the VIPriors train/val/test folders from ImageNet-2012 or Tiny ImageNet")
    p.add_argument("root", metavar="ROOT",
                   help="ImageNet-2012 root (train/<wnid>/, val/<wnid>/) or Tiny ImageNet root (tiny-imagenet-200: "
                        "train/<wnid>/images/, val/images/ + val/val_annotations.txt; test = all of its val), "
                        "told apart by that layout")
    p.add_argument("out", metavar="OUT", help="new or empty folder for train/<wnid>/, val/<wnid>/, test/imgs/")
    p.add_argument("--pickles", default=None, metavar="DIR",
                   help="folder with the challenge toolkit's train.pickle, val.pickle, test.pickle "
                        "(default: a seeded random subset; ImageNet-2012 only)")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="random subset: images per class in each of train, val and test (default 50); "
                        "Tiny ImageNet: in train and val, drawn from its train (500 per class)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="random subset: seed of the draws (default 0)")
    p.add_argument("--test-labels", default=None, metavar="FILE",
                   help="write the true test classes to FILE (a submission-format CSV for `fastvip score`); "
                        "never written beside the images")
    p.add_argument("--copy", action="store_true", help="copy the images instead of hard-linking them")
    p.add_argument("--force", action="store_true", help="replace the train/val/test folders of a previous split in OUT")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out files a pickle or val_annotations.txt lists but ROOT lacks (default: an error)")
    _common(p)
    p.set_defaults(func=cmd_split)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", formatter_class=_Defaults, help="class probabilities and a submission")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("data", help="packed .beton to predict")
    _add_weights(p, "best = the weights (raw or EMA) that scored best on val")
    p.add_argument("--tta", choices=("none", "flip", "multiscale", "tencrop"), default="none",
                   help="test-time augmentation (views averaged; see fastvip/infer/tta.py)")
    p.add_argument("--scales", type=_int_list, default=None,
                   help="multiscale sizes, e.g. 224,320,380,448 (default: the recipe's tta_scales; "
                        "unset: train size x 1, 320/224, 380/224, 448/224)")
    p.add_argument("--tencrop-size", type=int, default=None,
                   help="tencrop view size (default: the recipe's tencrop_size; unset: 2 x train size)")
    p.add_argument("--size", type=int, default=None,
                   help="--tta none|flip view size (default: the recipe's eval_size; unset: its image_size)")
    p.add_argument("--fusion", type=float, default=None, metavar="W",
                   help="weight of the auxiliary head's probabilities (default: the recipe's fusion_weight; "
                        "0 = the main classifier alone)")
    p.add_argument("--out", default=None, help="probabilities .npz (default: RUN_DIR/predictions/)")
    p.add_argument("--submission", default=None, help="write a VIPriors submission CSV")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's batch_size")
    _common(p)
    p.set_defaults(func=cmd_predict)


def _add_export(sub) -> None:
    p = sub.add_parser("export", formatter_class=_Defaults,
                       help="write a timm model folder (timm.create_model('local-dir:OUT_DIR', pretrained=True))")
    p.add_argument("run", metavar="RUN_DIR", help="run directory or checkpoint file")
    p.add_argument("out", metavar="OUT_DIR", help="new or empty folder for model.safetensors and config.json")
    _add_weights(p, "best = the weights (raw or EMA) that scored best on val; last = the last epoch's")
    p.add_argument("--force", action="store_true", help="replace a previous export in OUT_DIR")
    _common(p)
    p.set_defaults(func=cmd_export)


def _add_ensemble(sub) -> None:
    p = sub.add_parser("ensemble", formatter_class=_Defaults, help="average probabilities into a submission")
    p.add_argument("probs", nargs="+", metavar="PROBS.npz", help="outputs of fastvip predict")
    p.add_argument("--weights", default=None, help="comma-separated weights (default: equal)")
    p.add_argument("--submission", required=True, help="VIPriors submission CSV to write")
    p.add_argument("--out", default=None, help="also write the averaged probabilities (.npz)")
    _common(p)
    p.set_defaults(func=cmd_ensemble)


def _add_score(sub) -> None:
    p = sub.add_parser("score", formatter_class=_Defaults, help="top-1 of a submission against labels")
    p.add_argument("submission")
    p.add_argument("labels", help="CSV in the submission format holding the true classes")
    _common(p)
    p.set_defaults(func=cmd_score)


def _add_show(sub) -> None:
    p = sub.add_parser("show", formatter_class=_Defaults, help="print a resolved recipe")
    p.add_argument("recipe")
    _add_set(p)
    _common(p)
    p.set_defaults(func=cmd_show)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", formatter_class=_Defaults, help="PNG training curves of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (several are overlaid)")
    p.add_argument("--out", default=None, help="PNG path (default: FIRST_RUN_DIR/plots/curves.png)")
    _common(p)
    p.set_defaults(func=cmd_plot)


def _add_recipes(sub) -> None:
    p = sub.add_parser("recipes", formatter_class=_Defaults, help="list recipe files")
    p.add_argument("--dir", default=None, help="folder of recipe files (default: the shipped recipes)")
    _common(p)
    p.set_defaults(func=cmd_recipes)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", formatter_class=_Defaults,
                       help="check packed files, run directories and checkpoints for damage")
    p.add_argument("paths", nargs="+", metavar="PATH", help="packed .beton files, run directories, checkpoint files")
    p.add_argument("--decode", action="store_true", help="packed files: also decode every image whole "
                   "(libjpeg's warnings count as damage)")
    p.add_argument("--add-checksums", action="store_true", help="packed files without per-sample checksums "
                   "(packed before fastvip wrote them): add them to the sidecar, then check")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _common(p)
    p.set_defaults(func=cmd_verify)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FastvipError as e:
        if args.debug:
            raise
        from fastvip.console import printable
        print(printable(f"error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - no tracebacks without --debug
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
