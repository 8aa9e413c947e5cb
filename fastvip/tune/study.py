"""The study (one Optuna study in one storage) and the loop that keeps ``--jobs`` trials running.

N (``--trials``) counts the study's trials that end COMPLETE or PRUNED, over every tuner that
shares the storage: a tuner starts a trial only while COMPLETE + PRUNED + RUNNING is below N,
and a trial that two tuners started at once beyond N is dropped (FAIL, ``surplus``) before it
draws parameters. A FAIL does not count, so another trial takes its place. A tuner returns
once N trials have ended (none of its own is then RUNNING); while other tuners' RUNNING trials
hold the places left it waits, as they may fail and need replacing; after ``--timeout`` (or
five failures in a row) it returns once its own trials have ended.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from fastvip import recipe as recipe_mod
from fastvip.errors import FastvipError
from fastvip.tune import space as space_mod
from fastvip.tune.trial import CLAIM_NAME, Claim, Outcome, Spec, TrialRun

STUDY = "fastvip"
POLL_S = 0.5             # the running trials' metrics and processes are polled this often
SCAN_S = 2.0             # the storage is read this often with a free slot (takeovers, other tuners)
SCAN_BUSY_S = 15.0       # and this often with every slot busy (the progress line)
STALE_S = 600.0          # a RUNNING trial out of reach with no heartbeat for this long is lost
MAX_FAILS_IN_A_ROW = 5   # this many failed trials in a row stop the tuner (a broken setting)
ENDED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str | None, out: Path):
    """An Optuna storage: an RDB URL (``sqlite:///``, ``postgresql://``, ...; default
    ``sqlite:///DIR/study.db``), or else the path of a journal file (for a shared file system)."""
    url = url or f"sqlite:///{out / 'study.db'}"
    if "://" in url:
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine), url
    from optuna.storages.journal import JournalFileBackend
    path = Path(url).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)


def make_pruner(kind: str, startup: int):
    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0, interval_steps=1)


def open_study(url: str | None, out: Path, name: str, pruner) -> tuple[optuna.Study, str]:
    """Create or load the study (several tuners may do it at once: retried)."""
    for attempt in range(5):
        try:
            storage, shown = open_storage(url, out)
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        pruner=pruner, load_if_exists=True)
            break
        except Exception as e:  # noqa: BLE001 - a storage created by two processes at once
            if isinstance(e, (ValueError, ImportError)) or attempt == 4:
                raise FastvipError(f"storage {url or out / 'study.db'}: {type(e).__name__}: {e}") from None
            time.sleep(1 + attempt)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise FastvipError(f"study {name} in {shown} minimises; fastvip tune maximises val top-1")
    return study, shown


def slot_envs(jobs: int) -> list[dict]:
    """Per slot: one GPU each (``CUDA_VISIBLE_DEVICES``), or an equal share of the CPU threads."""
    if jobs <= 1:
        return [{}]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        import torch
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(jobs)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // jobs))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(jobs)]


@dataclass
class Settings:
    recipe: str              # absolute path of the base recipe
    sets: list[str]          # --set values, key=value
    space_fn: Callable
    trials: int              # N
    out: Path                # absolute DIR
    jobs: int = 1
    timeout_s: float | None = None
    console: object = None


class Tuner:
    """This process's part of the study."""

    def __init__(self, study: optuna.Study, settings: Settings):
        self.study, self.s = study, settings
        self.running: dict[int, TrialRun] = {}
        self.free = list(range(settings.jobs))
        self.envs = slot_envs(settings.jobs)
        self.deadline = time.monotonic() + settings.timeout_s if settings.timeout_s else None
        self.fails_in_a_row, self.last_fail = 0, None
        self.stop_signal, self.stopping = 0, False
        self.done = 0
        self.outcomes: list[Outcome] = []

    def log(self, message: str) -> None:
        if self.s.console is not None:
            self.s.console.log(message)

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal:  # a second Ctrl-C: kill the runs now
            for run in self.running.values():
                run.signal(signal.SIGKILL)
        self.stop_signal = signum

    def run(self, bar) -> int:
        """Run trials until the study has N; 0, or 130 / 75 when stopped by SIGINT / SIGTERM."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop(bar)
        finally:
            self._abandon()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if self.stop_signal:
            return 130 if self.stop_signal == signal.SIGINT else 75
        if self.fails_in_a_row >= MAX_FAILS_IN_A_ROW:
            o = self.last_fail
            raise FastvipError(f"{self.fails_in_a_row} trials failed in a row; the last, trial {o.number}: "
                               f"{o.note or 'no log line'} (see {self.s.out / 'trials' / f'{o.number:04d}'}/run.log)")
        return 0

    def _loop(self, bar) -> None:
        next_scan = 0.0
        while True:
            if self.stop_signal and not self.stopping:
                self._begin_stop()
            for run in list(self.running.values()):
                outcome = run.poll()
                if outcome is not None:
                    self._finished(run, outcome)
                    next_scan = 0.0
            if self.stopping:
                if not self.running:
                    return
            elif time.monotonic() >= next_scan:
                next_scan = time.monotonic() + (SCAN_S if self.free else SCAN_BUSY_S)
                if self._schedule(bar):
                    return
            time.sleep(POLL_S)

    def _may_start(self) -> bool:
        timed_out = self.deadline is not None and time.monotonic() >= self.deadline
        return not timed_out and self.fails_in_a_row < MAX_FAILS_IN_A_ROW

    def _schedule(self, bar) -> bool:
        """Read the study, take over or start trials in free slots; True when this tuner is done."""
        trials = self.study.get_trials(deepcopy=False, states=(*ENDED, TrialState.RUNNING))
        self.done = sum(t.state in ENDED for t in trials)
        if self.done != bar.done:  # other tuners' trials count too
            bar.advance(self.done - bar.done, best=self._best_text())
        foreign = [t for t in trials if t.state == TrialState.RUNNING and t.number not in self.running]
        for t in foreign:
            run_dir = t.user_attrs.get("run_dir")
            if run_dir and (Path(run_dir) / CLAIM_NAME).exists():
                if self.free:
                    self._take_over(t)
            elif self._stale(t):
                self._lost(t)
        active = self.done + sum(t.state == TrialState.RUNNING for t in trials)
        while self.free and self._may_start() and active < self.s.trials:
            self._start_new()
            active += 1
        if self.running:
            return False
        # nothing of ours runs: done, or (timed out, failing) leave the rest to the other tuners;
        # else the other tuners' RUNNING trials hold the remaining places: wait, they may fail
        return self.done >= self.s.trials or not self._may_start()

    def _best_text(self) -> str:
        try:
            best = self.study.best_trial
        except ValueError:
            return "-"
        return f"{best.value:.2f} (trial {best.number})"

    def _slot(self) -> tuple[int, dict]:
        slot = self.free.pop(0)
        return slot, self.envs[slot % len(self.envs)]

    def _start_new(self) -> None:
        trial = self.study.ask()
        if self._surplus(trial):
            return
        run_dir = self.s.out / "trials" / f"{trial.number:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        if any(p.name != CLAIM_NAME for p in run_dir.iterdir()):
            self.study.tell(trial, state=TrialState.FAIL)
            raise FastvipError(f"{run_dir} holds files of another study; give this study its own --out")
        claim = Claim(run_dir)
        claim.acquire()
        trial.set_user_attr("host", socket.gethostname())
        try:
            pairs = space_mod.override_pairs(self.s.space_fn, trial, f"trial {trial.number}")
            recipe = recipe_mod.resolve(self.s.recipe, [*self.s.sets, *pairs])
            space_mod.check_data(recipe, f"trial {trial.number}")
        except FastvipError as e:
            trial.set_user_attr("last_log_line", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            claim.release()
            self._finished(None, Outcome(trial.number, "FAIL", None, 0.0, str(e)))
            return
        spec = Spec(self.s.recipe, list(self.s.sets), pairs, str(run_dir), os.getcwd())
        for key, value in spec.attrs().items():  # run_dir last of all: a takeover needs the rest
            if key != "run_dir":
                trial.set_user_attr(key, value)
        trial.set_user_attr("heartbeat", time.time())
        trial.set_user_attr("run_dir", spec.run_dir)
        slot, env = self._slot()
        self.running[trial.number] = TrialRun(self.study, trial, spec, claim, recipe.shipped_weights(), env, slot,
                                              console=self.s.console)
        drawn = " ".join(pairs) or "(no overrides)"
        self.log(f"trial {trial.number}: started ({self.done} of {self.s.trials} done): {drawn}")

    def _surplus(self, trial) -> bool:
        """Whether ``trial`` is beyond N (another tuner started one at the same time): then FAIL it,
        before it draws anything, and put back what it took from the queue."""
        trials = self.study.get_trials(deepcopy=False, states=(*ENDED, TrialState.RUNNING))
        done = sum(t.state in ENDED for t in trials)
        running = sorted((t for t in trials if t.state == TrialState.RUNNING), key=lambda t: t.number)
        allowed = {t.number for t in running[:max(0, self.s.trials - done)]}
        if trial.number in allowed:
            return False
        mine = [t for t in running if t.number == trial.number]
        fixed = mine[0].system_attrs.get("fixed_params") if mine else None
        trial.set_user_attr("surplus", True)
        self.study.tell(trial, state=TrialState.FAIL)
        if fixed:
            self.study.enqueue_trial(fixed)
        return True

    def _take_over(self, frozen) -> None:
        """Continue a RUNNING trial whose tuner is gone (its claim is free), with ``--resume``."""
        spec = Spec.from_attrs(frozen.user_attrs)
        claim = Claim(Path(spec.run_dir))
        if not claim.acquire():
            return  # its tuner is alive
        still = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if t.number == frozen.number]
        if not still:  # it ended between the read and the claim
            claim.release()
            return
        frozen = still[0]
        trial = optuna.trial.Trial(self.study, frozen._trial_id)  # the Trial handle of a stored trial
        if frozen.intermediate_values and trial.should_prune():
            run = TrialRun(self.study, trial, spec, claim, "raw", {}, -1, console=self.s.console)
            run.seconds = float(frozen.user_attrs.get("seconds", 0.0))
            self._finished(None, run.tell(TrialState.PRUNED, None, 0, ""))
            return
        try:
            weights = recipe_mod.resolve(spec.recipe, [*spec.sets, *spec.overrides]).shipped_weights()
        except FastvipError as e:
            trial.set_user_attr("last_log_line", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            claim.release()
            return
        slot, env = self._slot()
        run = TrialRun(self.study, trial, spec, claim, weights, env, slot, resume=True,
                       reported=set(frozen.intermediate_values), console=self.s.console)
        run.seconds = float(frozen.user_attrs.get("seconds", 0.0))
        trial.set_user_attr("host", socket.gethostname())
        self.running[trial.number] = run
        self.log(f"trial {trial.number}: continuing the run a stopped tuner left in {spec.run_dir} (--resume)")

    def _stale(self, frozen) -> bool:
        beat = frozen.user_attrs.get("heartbeat")
        if beat is None:
            beat = frozen.datetime_start.timestamp() if frozen.datetime_start else time.time()
        return time.time() - beat > STALE_S

    def _lost(self, frozen) -> None:
        """A RUNNING trial out of reach whose tuner stopped beating: FAIL, and its parameters again."""
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        trial.set_user_attr("last_log_line", f"lost: no heartbeat for {STALE_S / 60:.0f} min and its run "
                                             "directory is out of reach; its parameters run again")
        self.study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
        if frozen.params:
            self.study.enqueue_trial(frozen.params, user_attrs={"rerun_of": frozen.number})
        self.log(f"trial {frozen.number}: lost (no heartbeat, out of reach); its parameters run again")

    def _finished(self, run: TrialRun | None, o: Outcome) -> None:
        if run is not None:
            self.running.pop(run.number, None)
            if run.slot >= 0:
                self.free.append(run.slot)
                self.free.sort()
        self.outcomes.append(o)
        if o.state == "FAIL":
            self.fails_in_a_row, self.last_fail = self.fails_in_a_row + 1, o
        elif o.state in ("COMPLETE", "PRUNED"):
            self.fails_in_a_row = 0
            self.done += 1
        value = f" {o.value:.2f}" if o.value is not None else ""
        note = f": {o.note}" if o.note else ""
        self.log(f"trial {o.number}: {o.state}{value} in {o.seconds:.0f} s{note}; "
                 f"{self.done} of {self.s.trials} done, best {self._best_text()}")

    def _begin_stop(self) -> None:
        self.stopping = True
        for run in self.running.values():
            run.stop()
        if self.running:
            self.log(f"tune: stopping; trial(s) {', '.join(map(str, self.running))} checkpoint and stay RUNNING "
                     "(the same command continues them; Ctrl-C again kills them)")

    def _abandon(self) -> None:
        """Leaving on an error: stop the runs still going (they checkpoint) and free their claims."""
        for run in list(self.running.values()):
            run.stop()
        t_end = time.monotonic() + 60
        while any(r.proc is not None and r.proc.poll() is None for r in self.running.values()):
            if time.monotonic() > t_end:
                for r in self.running.values():
                    r.signal(signal.SIGKILL)
                break
            time.sleep(POLL_S)
        for run in self.running.values():
            run.claim.release()
