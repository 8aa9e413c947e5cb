"""One trial: a real ``fastvip run`` in its own process on ``DIR/trials/NNNN``.

The tuner that runs a trial holds ``NNNN/.tuner.lock`` (``flock``; the kernel drops it when the
tuner dies in any way), so a RUNNING trial whose lock is free was left by a tuner that is gone:
another tuner (or the same command again) takes it over and continues it with ``--resume``.
What a trial runs (recipe, ``--set`` values, the space's overrides, folder) is stored in the
trial's user attributes, so the takeover runs the very same recipe. The run's own lock
(:mod:`fastvip.train.runlock`) may still be held by the old run finishing its stop checkpoint:
the takeover waits for it.

The run is started in a new session (``start_new_session``: Ctrl-C at the terminal reaches the
tuner, which stops the run cleanly) and, on Linux, with ``PR_SET_PDEATHSIG``: when the tuner is
killed (a job scheduler killing its process group, SIGKILL, the OOM killer) its run gets SIGTERM,
stops at a step boundary with a checkpoint and exits 75, ready to be continued.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastvip.errors import FastvipError

# fastvip.train's protocol, restated: importing fastvip.train loads torch and the loaders
# (seconds of CPU per tuner), and the tuner needs neither (tests/test_tune.py checks they agree)
EXIT_TEMPFAIL = 75       # fastvip.train.stop.EXIT_TEMPFAIL: a run stopped by a signal, resumable
RUN_LOCK_NAME = ".lock"  # fastvip.train.runlock.LOCK_NAME: flock held by a live run
CLAIM_NAME = ".tuner.lock"
LOG_NAME = "run.log"
HEARTBEAT_S = 60.0   # a running trial's "heartbeat" user attribute is refreshed this often
MAX_RESUMES = 3      # a run stopped by a signal the tuner did not send is resumed this often
IN_USE = "in use by another run"


class Claim:
    """The tuner's hold on a trial directory (``flock`` on ``NNNN/.tuner.lock``)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CLAIM_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the claim; False when a live tuner holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Spec:
    """What a trial runs; kept in its user attributes (a takeover runs the same)."""

    recipe: str           # absolute path of the base recipe file
    sets: list[str]       # the tuner's --set values
    overrides: list[str]  # the space's overrides, key=value
    run_dir: str          # absolute DIR/trials/NNNN
    cwd: str              # where relative paths in the recipe and --set values point from

    def command(self, resume: bool) -> list[str]:
        pairs = [*self.sets, *self.overrides]
        return [sys.executable, "-m", "fastvip", "run", self.recipe, "--out", self.run_dir,
                *(["--set", *pairs] if pairs else []), *(["--resume"] if resume else [])]

    def attrs(self) -> dict:
        return {"recipe": self.recipe, "sets": self.sets, "overrides": self.overrides,
                "run_dir": self.run_dir, "cwd": self.cwd}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Spec":
        return cls(attrs["recipe"], list(attrs.get("sets", [])), list(attrs.get("overrides", [])),
                   attrs["run_dir"], attrs.get("cwd") or os.getcwd())


def last_log_line(run_dir: Path) -> str:
    """The last non-empty line of the trial's ``run.log`` (its error line when it failed)."""
    path = Path(run_dir) / LOG_NAME
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


def run_lock_free(run_dir: Path) -> bool:
    """Whether no live ``fastvip run`` holds the trial directory's run lock."""
    try:
        fd = os.open(Path(run_dir) / RUN_LOCK_NAME, os.O_RDWR)  # NFS: an exclusive lock needs write access
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the flock, if taken
    return True


def read_epochs(run_dir: Path) -> list[dict]:
    """The epoch lines of the run's ``metrics.jsonl`` (as fastvip.train.metrics.read: a line cut
    by a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "epoch":
            out.append(record)
    return out


# a first Python that asks Linux for SIGTERM when its parent (the tuner) dies, then becomes the run
# (execv keeps the request); no preexec_fn, which is unsafe beside threads (rich's refresh thread)
_PDEATHSIG = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
              "os.getppid() == int(sys.argv[1]) or os.kill(os.getpid(), signal.SIGTERM); "
              "os.execv(sys.argv[2], sys.argv[2:])")


def dying_with_tuner(cmd: list[str]) -> list[str]:
    """``cmd`` started so that the run gets SIGTERM when the tuner dies (Linux: ``PR_SET_PDEATHSIG``;
    elsewhere ``cmd`` as it is)."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _PDEATHSIG, str(os.getpid()), *cmd]


@dataclass
class Outcome:
    number: int
    state: str               # COMPLETE, PRUNED, FAIL, or RUNNING (left for a takeover)
    value: float | None
    seconds: float
    note: str = ""


@dataclass
class TrialRun:
    """A trial this tuner runs: the process, the reports to the pruner, the end."""

    study: object
    trial: object            # optuna.trial.Trial
    spec: Spec
    claim: Claim
    weights: str             # "ema" or "raw": the recipe's shipped weights (the objective's)
    env: dict
    slot: int
    resume: bool = False
    reported: set = field(default_factory=set)
    console: object = None
    proc: subprocess.Popen | None = None
    pruned: bool = False
    stopping: bool = False
    resumes: int = 0
    seconds: float = 0.0
    _t0: float = 0.0
    _beat: float = 0.0
    _waiting_said: bool = False

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)

    def _log(self, message: str) -> None:
        if self.console is not None:
            self.console.log(message)

    def _launch(self) -> None:
        if not run_lock_free(self.run_dir):  # the run a killed tuner left is still finishing
            if not self._waiting_said:
                self._log(f"trial {self.number}: {self.run_dir} is {IN_USE}; waiting for it to end")
                self._waiting_said = True
            return
        cwd = self.spec.cwd if Path(self.spec.cwd).is_dir() else None
        with open(self.run_dir / LOG_NAME, "ab") as log:
            log.write(f"$ {' '.join(self.spec.command(self.resume)[2:])}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(dying_with_tuner(self.spec.command(self.resume)), cwd=cwd,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        self._t0 = time.monotonic()
        self._waiting_said = False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the run's process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        """The tuner stops: SIGTERM, the run checkpoints and exits 75; the trial stays RUNNING."""
        self.stopping = True
        self.signal(signal.SIGTERM)

    def epochs(self) -> list[dict]:
        return read_epochs(self.run_dir)

    def _report(self) -> None:
        """Each new validation to the pruner, and its verdict on it (epoch by epoch: the pruner
        compares a trial at its last reported epoch); SIGTERM when it says prune."""
        key = "val_top1_ema" if self.weights == "ema" else "val_top1"
        for line in self.epochs():
            value, epoch = line.get(key), line.get("epoch")
            if self.pruned or value is None or epoch in self.reported or not math.isfinite(value):
                continue
            self.trial.report(float(value), int(epoch))
            self.reported.add(epoch)
            self._save_seconds()
            if not self.stopping and self.trial.should_prune():
                self.pruned = True
                self._log(f"trial {self.number}: pruned after epoch {epoch}; stopping its run")
                self.signal(signal.SIGTERM)

    def _save_seconds(self) -> None:
        """The run seconds so far, kept should this tuner die (a takeover adds on to them)."""
        if self.proc is not None:
            self.trial.set_user_attr("seconds", round(self.seconds + time.monotonic() - self._t0, 2))

    def poll(self) -> Outcome | None:
        """Advance the trial; its :class:`Outcome` once it has ended (the study is told)."""
        now = time.monotonic()
        if now >= self._beat and not self.stopping:  # alive; and the seconds so far, should this tuner die
            self.trial.set_user_attr("heartbeat", time.time())
            self._save_seconds()
            self._beat = now + HEARTBEAT_S
        if self.proc is None:
            if self.stopping:
                return self._leave()
            self._launch()
            return None
        self._report()
        rc = self.proc.poll()
        if rc is None:
            return None
        self.seconds += time.monotonic() - self._t0
        self.proc = None
        return self._ended(rc)

    def _ended(self, rc: int) -> Outcome | None:
        import optuna
        line = last_log_line(self.run_dir)
        if self.pruned:
            return self.tell(optuna.trial.TrialState.PRUNED, None, rc, line)
        if rc == 0:
            final = [e.get("last_top1") for e in self.epochs() if e.get("last_top1") is not None]
            if final and math.isfinite(final[-1]):
                return self.tell(optuna.trial.TrialState.COMPLETE, float(final[-1]), rc, line)
            return self.tell(optuna.trial.TrialState.FAIL, None, rc, "the run ended without a last-epoch val top-1")
        if self.stopping:
            return self._leave()
        if IN_USE in line:  # lost the race for the run lock: wait again
            return None
        if rc == EXIT_TEMPFAIL and self.resumes < MAX_RESUMES:  # stopped by someone else's signal
            self.resumes += 1
            self.resume = True
            self._log(f"trial {self.number}: its run was stopped by a signal; continuing it (--resume)")
            return None
        return self.tell(optuna.trial.TrialState.FAIL, None, rc, line)

    def _leave(self) -> Outcome:
        """Stopped with the tuner: RUNNING, its checkpoint kept, for the next tuner to continue."""
        self.trial.set_user_attr("seconds", round(self.seconds, 2))
        self.claim.release()
        return Outcome(self.number, "RUNNING", None, self.seconds, "stopped with the tuner")

    def tell(self, state, value: float | None, rc: int, line: str) -> Outcome:
        self.trial.set_user_attr("seconds", round(self.seconds, 2))
        self.trial.set_user_attr("exit_code", rc)
        if state.name == "FAIL":
            self.trial.set_user_attr("last_log_line", line)
        if value is not None:
            self.study.tell(self.trial, value)
        else:
            self.study.tell(self.trial, state=state)
        note = line if state.name == "FAIL" else ""
        clean_up(self.run_dir, state.name, self.console)
        self.claim.release()
        return Outcome(self.number, state.name, value, self.seconds, note)


def clean_up(run_dir: Path, state: str, console=None) -> None:
    """A finished trial keeps its metrics, logs and (COMPLETE) the final weights only.

    COMPLETE: ``last.pt`` is rewritten as the shipped weights alone (no optimiser state, no
    second copy) and the val-selected ``best.pt`` is removed (the objective never selects an
    epoch); PRUNED and FAIL: both checkpoints are removed."""
    last = run_dir / "last.pt"
    try:
        if state == "COMPLETE" and last.is_file():
            from fastvip.methods.model import load_checkpoint, save_checkpoint
            ckpt = load_checkpoint(last)
            keep = ("inference", "weights", "epoch", "recipe", "classes")
            save_checkpoint(last, {k: ckpt[k] for k in keep if k in ckpt})
        elif state != "COMPLETE":
            last.unlink(missing_ok=True)
        (run_dir / "best.pt").unlink(missing_ok=True)
    except (OSError, FastvipError) as e:  # disk clean-up is a convenience; say why it was skipped
        if console is not None:
            console.log(f"tune: {run_dir}: checkpoints left as they are ({e})")
