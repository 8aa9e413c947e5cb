"""The run directory: open (or reopen for ``--resume``), the checkpoints in it, plots.

A run directory holds ``recipe.json`` / ``recipe.py`` (what ran), ``metrics.jsonl`` (one line
per epoch), ``last.pt`` (everything ``--resume`` needs), ``best.pt`` (the val-selected weights)
with ``best.json``, and ``plots/``. The writer is process 0, under the run lock
(:mod:`fastvip.train.runlock`); every write is atomic.
"""
from __future__ import annotations

from pathlib import Path

from fastvip import atomic
from fastvip import recipe as recipe_mod
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.methods.model import load_checkpoint, save_checkpoint
from fastvip.recipe import Recipe
from fastvip.train import metrics as metrics_log
from fastvip.train.state import RunState, rng_state

# where the run lives, whether it also logs to TensorBoard and how often it checkpoints do not
# change its results: a resume may change them
RESUME_MAY_CHANGE = ("out", "tensorboard", "checkpoint_minutes", "skip_damaged")


def open_run_dir(run_dir: Path, recipe: Recipe, resume: bool, console: Console, write: bool = True) -> dict | None:
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
        diff = [k for k in recipe.to_dict() if getattr(saved, k) != getattr(recipe, k) and k not in RESUME_MAY_CHANGE]
        if diff:
            raise FastvipError(f"--resume with a different recipe (changed: {', '.join(diff)})")
        if write:
            metrics_log.keep_epochs_up_to(run_dir / "metrics.jsonl", RunState.from_checkpoint(ckpt).epoch)
    elif resume:
        console.log(f"run: nothing to resume in {run_dir}, starting from scratch")
    if write:
        atomic.write_text(run_dir / "recipe.json", recipe_mod.dumps(recipe))
        atomic.write_text(run_dir / "recipe.py", recipe.to_text())
    return ckpt


def save_last(run_dir: Path, trainer, state: RunState, recipe: Recipe, classes: list[str]) -> None:
    """``last.pt``: everything ``--resume`` needs, and the weights the recipe declares for inference."""
    shipped = recipe.shipped_weights()
    save_checkpoint(run_dir / "last.pt", {
        **trainer.state_dict(), "run_state": state.to_dict(), "epoch": state.epoch, "rng": rng_state(),
        "recipe": recipe.to_dict(), "classes": classes,
        "inference": (trainer.ema.module if shipped == "ema" else trainer.model).state_dict(), "weights": shipped})


def save_best(run_dir: Path, trainer, weights: str, epoch: int, recipe: Recipe, classes: list[str]) -> None:
    """``best.pt``: the val-selected weights (``raw`` or ``ema``) of ``epoch``."""
    module = trainer.ema.module if weights == "ema" else trainer.model
    save_checkpoint(run_dir / "best.pt", {"inference": module.state_dict(), "weights": weights, "epoch": epoch,
                                          "recipe": recipe.to_dict(), "classes": classes})


def last_good(run_dir: Path) -> str:
    """Where the run can be picked up after a failure, for the error line."""
    last = run_dir / "last.pt"
    return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"


def write_plots(run_dir: Path, console: Console) -> None:
    from fastvip.train.plot import plot_runs
    try:
        plot_runs([run_dir], run_dir / "plots" / "curves.png")
    except (FastvipError, ImportError) as e:  # plots are a convenience; say why there is none
        console.log(f"run: no plot ({e})")
