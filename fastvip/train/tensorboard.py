"""TensorBoard event files in ``RUN_DIR/tensorboard/`` (recipe field ``tensorboard``).

Epoch scalars (``epoch/<metrics.jsonl field>``) are keyed by epoch and step scalars
(``step/train_loss``, ``step/lr``) by the optimiser step count, so a resumed run
continues both axes. Only process 0 writes, as it does ``metrics.jsonl``.
"""
from __future__ import annotations

import weakref
from pathlib import Path

from fastvip.errors import FastvipError

# the record kind, the epoch itself (the x-axis) and the wall clock (TensorBoard stamps
# every point with it, and a float32 scalar would round it to minutes)
SKIPPED = ("event", "epoch", "time")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise FastvipError("tensorboard=true needs the tensorboard package "
                           f"(pip install 'fastvip[tensorboard]'): {why}") from None
    return SummaryWriter


def check(recipe) -> None:
    """Fail now, before any data is touched, when ``tensorboard=true`` cannot write."""
    if recipe.tensorboard:
        _summary_writer()


def scalars(line: dict) -> dict[str, float]:
    """The numbers of a metrics line as ``epoch/<field>`` tags (booleans as 0/1, nested dicts
    as ``epoch/<field>/<key>``); strings, lists and None have no scalar form and are left out."""
    return _numbers({k: v for k, v in line.items() if k not in SKIPPED}, "epoch")


def _numbers(values: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, tag))
        elif isinstance(value, (bool, int, float)):
            out[tag] = float(value)
    return out


class Board:
    """Writes when given a run directory; a board without one ignores every call."""

    def __init__(self, run_dir: Path | None = None, step: int = 0):
        self._writer = None
        if run_dir is not None:
            # a run restarted from its checkpoint at `step` marks step + 1 as a restart:
            # TensorBoard then drops whatever the interrupted run wrote from there on
            self._writer = _summary_writer()(str(Path(run_dir) / "tensorboard"), purge_step=step + 1)
            # flushed at exit too, so an error mid-epoch keeps the steps logged before it
            self._finalize = weakref.finalize(self, self._writer.close)

    def step(self, step: int, loss: float, lr: float) -> None:
        if self._writer is not None:
            self._writer.add_scalar("step/train_loss", loss, step)
            self._writer.add_scalar("step/lr", lr, step)

    def epoch(self, line: dict) -> None:
        if self._writer is not None:
            for tag, value in scalars(line).items():
                self._writer.add_scalar(tag, value, line["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._finalize()


def open_board(recipe, run_dir: Path, step: int, main: bool) -> Board:
    """The run's board: writing on process 0 with ``tensorboard=true``, silent otherwise."""
    return Board(run_dir, step) if recipe.tensorboard and main else Board()
