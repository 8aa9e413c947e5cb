"""Stopping a run when a scheduler asks, and checkpointing on a timer.

SIGTERM (Slurm and Kubernetes preemption, torchrun passing its own on) and SIGUSR1 (Slurm's
advance warning, ``sbatch --signal=USR1@120``) ask the run to stop: it finishes the current
step, writes a checkpoint that ``--resume`` continues from exactly (mid-epoch too), appends
``{"event": "stop", ...}`` to ``metrics.jsonl`` and exits with :data:`EXIT_TEMPFAIL` (75,
"try again": what requeue logic looks for). A second signal exits at once (128 + signal;
one within :data:`DUPLICATE_S` of the first is taken for the same request, which Slurm and
torchrun may both deliver), and so does a run that reaches no step boundary within
:data:`STEP_BOUND_S` of the first (75: its last checkpoint still resumes); validation and
the epoch's checkpoint are waited for. SIGINT (Ctrl-C) is left alone: it ends the run at
once, and ``--resume`` continues from the last checkpoint written.

``checkpoint_minutes`` writes the same mid-epoch checkpoint on a timer, so a kill -9 or a
lost node costs at most that much work. Under torchrun the processes agree at every tenth
step (one small all-reduce, where the progress line already waits for the device), so they
all stop, or checkpoint, after the same step.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import torch

from fastvip import distributed

EXIT_TEMPFAIL = 75
STEP_BOUND_S = 20.0  # torchrun gives its workers 30 s after its own SIGTERM
AGREE_EVERY = 10     # steps between agreements under torchrun (the progress interval)
DUPLICATE_S = 5.0    # a second signal sooner than this after the first is the same request
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class RunStopped(Exception):
    """Raised out of the training loop after the stop checkpoint is written (``epoch``: whole
    epochs done; the checkpoint may also hold part of the next)."""

    def __init__(self, signal_name: str, epoch: int, step: int):
        super().__init__(f"stopped by {signal_name} after step {step} ({epoch} whole epochs done)")
        self.signal_name, self.epoch, self.step = signal_name, epoch, step


class Stopper:
    """Signal handlers and the checkpoint timer, polled by the loop at step boundaries."""

    def __init__(self, checkpoint_minutes: float, world: int, device: torch.device):
        self.signum = 0       # the signal this process received
        self.stop_signum = 0  # the one the run stops for (under torchrun, maybe another process's)
        self.period = 60.0 * checkpoint_minutes
        self.next_due = time.monotonic() + self.period if self.period > 0 else float("inf")
        self.world, self.device = world, device
        self._previous: dict = {}
        self._bound: threading.Timer | None = None
        self._first = 0.0
        self._busy = False
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signum:
            if time.monotonic() - self._first < DUPLICATE_S:
                return  # the same request by a second route (Slurm and torchrun both pass SIGTERM on)
            os._exit(128 + signum)
        self.signum, self._first = signum, time.monotonic()
        self._arm()

    def _arm(self) -> None:
        self._bound = threading.Timer(STEP_BOUND_S, self._late)
        self._bound.daemon = True
        self._bound.start()

    def _late(self) -> None:
        if self._busy:  # validating or writing the epoch's checkpoint: the stop comes right after
            self._arm()
            return
        os._exit(EXIT_TEMPFAIL)

    @contextlib.contextmanager
    def busy(self):
        """Work between step boundaries that a stop waits for (validation, the epoch's checkpoint)."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def poll(self, step: int) -> str | None:
        """At a step boundary (``step`` steps done): ``"stop"``, ``"checkpoint"`` or None."""
        due = time.monotonic() >= self.next_due
        stop = self.signum
        if self.world > 1:
            if step % AGREE_EVERY:
                return None
            flags = torch.tensor([float(stop), float(due)], device=self.device)
            flags = distributed.all_reduce_max(flags)
            stop, due = int(flags[0].item()), bool(flags[1].item())
        if stop:
            if self._bound is not None:
                self._bound.cancel()  # the boundary is reached: the checkpoint may take its time
            self.stop_signum = stop  # this process's signal, or another's
            return "stop"
        if due:
            self.next_due = time.monotonic() + self.period
            return "checkpoint"
        return None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.stop_signum).name if self.stop_signum else ""

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._bound is not None:
            self._bound.cancel()


@contextlib.contextmanager
def forward_to_workers(torchrun: subprocess.Popen):
    """``fastvip run --nproc``: pass SIGTERM and SIGUSR1 straight to torchrun's workers.

    torchrun itself dies of SIGUSR1 (it has no handler), and on SIGTERM it would pass it on
    but report the workers' exit as its own failure; sending both to the workers makes them
    stop together at the next agreed step, within torchrun's grace period."""
    import psutil

    def forward(signum, frame):
        try:
            workers = psutil.Process(torchrun.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stopped_run(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` last ended with a stop line (it stopped for a signal)."""
    from fastvip.train import metrics
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return False
    events = [r.get("event") for r in metrics.read(path)]
    return bool(events) and events[-1] == "stop"
