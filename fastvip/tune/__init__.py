"""``fastvip tune``: hyperparameter search on Optuna, each trial a real ``fastvip run``.

    fastvip tune RECIPE --space SPACE.py --trials N --out DIR [--set key=value ...]
        [--storage URL] [--study NAME] [--jobs J] [--pruner median|none] [--timeout HOURS]

The objective is the last epoch's val top-1 of the weights the recipe ships (no best-epoch
selection); every validation goes to the pruner as it appears in the trial's ``metrics.jsonl``.
The study lives in ``sqlite:///DIR/study.db`` (or any Optuna storage: several tuners on several
machines share one study, N trials in all); the same command again continues it. Outputs:
``DIR/best.py``, ``DIR/trials.csv``, ``DIR/plots/tune.png``, ``DIR/trials/NNNN/`` (docs/commands.md).
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from fastvip.errors import FastvipError

HELP = "hyperparameter search (Optuna): each trial a fastvip run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="the base recipe file (recipes/*.py)")
    p.add_argument("--space", required=True, metavar="SPACE.py",
                   help="defines `def space(trial) -> dict`: recipe overrides drawn with trial.suggest_*")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="trials that end COMPLETE or PRUNED, in the whole study (failed ones do not count)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="study folder: trials/NNNN/, study.db, best.py, trials.csv, plots/tune.png")
    p.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="override recipe fields in every trial (type-checked; the space's values win)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL (sqlite:///, postgresql://, mysql://) or a journal file path on a "
                        "shared file system; tuners with the same storage and study share it "
                        "(default: sqlite:///DIR/study.db)")
    p.add_argument("--study", default="fastvip", metavar="NAME", help="study name in the storage")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="trials at once: one GPU each (CUDA_VISIBLE_DEVICES), or an equal share of the CPU threads")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="median: stop a trial whose val top-1 falls below the median of earlier trials at "
                        "the same epoch")
    p.add_argument("--startup-trials", type=int, default=5, metavar="K",
                   help="median pruner: trials that must finish before any is pruned")
    p.add_argument("--timeout", type=float, default=None, metavar="HOURS",
                   help="start no trial after this long (running ones finish)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--quiet", action="store_true", help="no progress output (errors and results still print)")


def add_parser(sub, formatter_class=argparse.HelpFormatter) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand (``cmd_tune``) to ``fastvip``'s subparsers (``sub``)."""
    p = sub.add_parser("tune", formatter_class=formatter_class, help=HELP, description=HELP)
    add_arguments(p)
    p.set_defaults(func=cmd_tune)
    return p


def _flat(sets) -> list[str]:
    return [pair for group in (sets or []) for pair in group]


def _settings(args, console):
    """Everything checked before the study is touched: the recipe, --set values, the space."""
    from fastvip import recipe as recipe_mod
    from fastvip.tune import space as space_mod
    from fastvip.tune.study import Settings
    if args.trials < 1 or args.jobs < 1:
        raise FastvipError("--trials and --jobs must be >= 1")
    if args.timeout is not None and args.timeout <= 0:
        raise FastvipError("--timeout must be > 0 hours")
    if args.startup_trials < 0:
        raise FastvipError("--startup-trials must be >= 0")
    sets = _flat(args.set)
    out = Path(args.out).resolve()
    recipe_path = recipe_mod.find_recipe(args.recipe).resolve()
    base = recipe_mod.resolve(recipe_path, sets)
    space_fn = space_mod.load_space(args.space)
    probes = space_mod.check_space(space_fn, base, args.space)
    console.log(f"tune: space {args.space} checked ({probes} probe draws: range ends, every choice)")
    if recipe_path == out / "best.py":  # tuning on from this study's best.py, which it rewrites
        recipe_path = _snapshot(recipe_path)
        console.log(f"tune: {out / 'best.py'} is rewritten by this study; its trials run a copy, {recipe_path}")
    return Settings(str(recipe_path), sets, space_fn, args.trials, out, args.jobs,
                    args.timeout * 3600 if args.timeout else None, console)


def _snapshot(path: Path) -> Path:
    """A copy of ``path`` beside it (its relative references still hold), named by its content."""
    import hashlib

    from fastvip import atomic
    data = path.read_bytes()
    copy = path.with_name(f"base-{hashlib.sha1(data).hexdigest()[:8]}.py")
    if not copy.exists():
        atomic.write_bytes(copy, data)
    return copy


def cmd_tune(args) -> int:
    """``fastvip tune``; the exit code (0; 130 or 75 when stopped by SIGINT or SIGTERM)."""
    import optuna

    from fastvip.console import Console
    from fastvip.tune import study as study_mod
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(quiet=args.quiet)
    s = _settings(args, console)
    s.out.mkdir(parents=True, exist_ok=True)
    study, shown = study_mod.open_study(args.storage, s.out, args.study,
                                        study_mod.make_pruner(args.pruner, args.startup_trials))
    tuner = study_mod.Tuner(study, s)
    console.log(f"tune: study {args.study} in {shown}, {args.trials} trials, {args.jobs} at once")
    try:
        with console.progress(f"tune {args.study}", total=args.trials, unit="trial") as bar:
            rc = tuner.run(bar)
    except BaseException:
        with contextlib.suppress(Exception):  # what there is, without hiding the error
            _outputs(study, s.out, shown, console)
        raise
    _outputs(study, s.out, shown, console)
    return rc


def _outputs(study, out: Path, shown: str, console) -> None:
    from optuna.trial import TrialState

    from fastvip.tune import report
    rows = report.write_csv(study, out / "trials.csv")
    best = report.write_best(study, out)
    try:
        plot = str(report.write_plot(study, out / "plots" / "tune.png"))
    except Exception as e:  # noqa: BLE001 - the plot is a convenience; say why there is none
        plot = f"none ({type(e).__name__}: {e})"
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    summary = [("study", f"{study.study_name} in {shown}"),
               ("trials", ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n) or "none")]
    if best is not None:
        b = study.best_trial
        summary += [("best", f"{b.value:.2f} (trial {b.number}): {' '.join(b.user_attrs.get('overrides', []))}"),
                    ("best.py", str(best))]
    summary += [("trials.csv", f"{out / 'trials.csv'} ({rows} rows)"), ("plot", plot),
                ("disk", f"{report.disk_use(out / 'trials') / 1e6:,.1f} MB in {out / 'trials'}")]
    console.table("tune summary", summary)
