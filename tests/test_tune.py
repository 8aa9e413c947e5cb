"""``fastvip tune``: a real study on the tiny colour sets, its outputs, pruning, a SIGKILL of the tuner
mid-trial and a rerun by two tuners on one storage.

The expensive part is the trials (each a ``fastvip run`` process), so one study grows through the
module: 2 trials (``--jobs 2``), then a third that is pruned, then a fourth whose tuner is killed,
then two tuners at once finish it and add a fifth (after a queued trial that diverges, FAIL).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest

from fastvip.errors import FastvipError
from fastvip.tune import add_parser, report, space as space_mod, trial as trial_mod

REPO = Path(__file__).resolve().parents[1]
FAST = REPO / "recipes" / "tiny_vipriors_fast.py"
SPACE = '''
def space(trial):
    return {"lr": trial.suggest_float("lr", 0.2, 0.5, log=True),
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2)}
'''
TINY = ["model=test_resnet", "image_size=16", "epochs=2", "batch_size=16", "workers=1", "device=cpu",
        "loader=ffcv", "amp=off", "channels_last=off", "eval_every=1"]
ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastvip")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return p.parse_args(["tune", *map(str, argv)])


def tune(argv: list) -> int:
    args = parse(argv)
    return args.func(args)


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="fastvip", storage=f"sqlite:///{out / 'study.db'}")


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def epochs(run_dir: Path) -> list[dict]:
    return [e for e in events(run_dir) if e["event"] == "epoch"]


def tuner(argv: list, log: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "fastvip.tune", *map(str, argv)], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, **popen)


def wait_for_epoch(run_dir: Path, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + seconds
    while not (metrics.exists() and '"epoch"' in metrics.read_text()):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{run_dir} never finished an epoch"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def study(colour_data, tmp_path_factory) -> dict:
    """Two trials at once (--jobs 2) on the shipped fast recipe, cut to the tiny sets."""
    root = tmp_path_factory.mktemp("tune")
    space = root / "space.py"
    space.write_text(SPACE)
    out = root / "study"
    data = [f"train_data={colour_data['train']}", f"val_data={colour_data['val']}"]
    t0 = time.perf_counter()
    rc = tune([FAST, "--space", space, "--trials", 2, "--jobs", 2, "--out", out, "--set", *data, *TINY, "--quiet"])
    return {"root": root, "space": space, "out": out, "rc": rc, "seconds": time.perf_counter() - t0}


def test_tiny_study_end_to_end(study):
    out = study["out"]
    assert study["rc"] == 0
    trials = load(out).get_trials()  # optuna reads DIR/study.db
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    runs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert runs == [out / "trials" / "0000", out / "trials" / "0001"]
    for t, run in zip(trials, runs):
        lines = epochs(run)
        assert [e["epoch"] for e in lines] == [1, 2]
        assert t.value == lines[-1]["last_top1"] and lines[-1]["last_weights"] == "raw"  # last epoch, shipped weights
        assert t.intermediate_values == {1: lines[0]["val_top1"], 2: lines[1]["val_top1"]}  # every validation reported
        assert 0.2 <= t.params["lr"] <= 0.5 and 0 <= t.params["label_smoothing"] <= 0.2
        ran = json.loads((run / "recipe.json").read_text())
        assert (ran["lr"], ran["label_smoothing"], ran["model"], ran["epochs"]) == \
            (t.params["lr"], t.params["label_smoothing"], "test_resnet", 2)
        assert (run / "run.log").read_text().startswith(f"$ fastvip run {FAST} --out {run} --set ")
        from fastvip.methods.model import load_checkpoint
        assert set(load_checkpoint(run / "last.pt")) == {"inference", "weights", "epoch", "recipe", "classes"}
        assert not (run / "best.pt").exists()  # intermediate checkpoints of a finished trial are gone
    # --jobs 2: the second trial started before the first ended
    starts = [events(r)[0]["time"] for r in runs]
    ends = [epochs(r)[-1]["time"] for r in runs]
    assert max(starts) < min(ends)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert list(rows[0]) == ["number", "state", "label_smoothing", "lr", "value", "seconds"]
    assert [float(r["value"]) for r in rows] == [t.value for t in trials]
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert (out / "plots" / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"tiny study (2 trials, --jobs 2): {study['seconds']:.1f} s")


def test_best_py_is_the_best_trial_and_show_accepts_it(study, capsys):
    from fastvip import recipe as recipe_mod
    from fastvip.cli import main
    out = study["out"]
    best = load(out).best_trial
    text = (out / "best.py").read_text()
    assert "load_recipe(recipes_dir() / 'tiny_vipriors_fast.py')" in text and "dataclasses.replace(" in text
    capsys.readouterr()
    assert main(["show", str(out / "best.py")]) == 0
    assert f"lr={best.params['lr']!r}," in capsys.readouterr().out
    ran = recipe_mod.from_dict(json.loads((Path(best.user_attrs["run_dir"]) / "recipe.json").read_text()))
    tuned = recipe_mod.load_recipe(out / "best.py")
    differ = [f for f in recipe_mod.field_names() if getattr(ran, f) != getattr(tuned, f)]
    assert differ == ["description"]  # exactly what the best trial ran


@pytest.fixture(scope="module")
def pruned(study) -> dict:
    """A third trial, queued with a hopeless lr and 30 epochs, on DIR/best.py as the recipe."""
    out = study["out"]
    load(out).enqueue_trial({"lr": 1e-4, "label_smoothing": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lr 1e-4 lies outside the space's range (Optuna warns)
        rc = tune([out / "best.py", "--space", study["space"], "--trials", 3, "--out", out, "--set", "epochs=30",
                   "--startup-trials", 2, "--quiet"])
    return {**study, "rc": rc}


def test_pruning_stops_the_run_with_sigterm(pruned):
    out = pruned["out"]
    assert pruned["rc"] == 0
    trials = load(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]  # N = 3: PRUNED counts
    t = trials[2]
    run = Path(t.user_attrs["run_dir"])
    assert t.params["lr"] == 1e-4 and t.user_attrs["exit_code"] == 75
    stop = [e for e in events(run) if e["event"] == "stop"]
    assert stop and stop[0]["signal"] == "SIGTERM"  # stopped at a step boundary
    assert t.intermediate_values == {1: epochs(run)[0]["val_top1"]}  # pruned on its first validation
    assert 1 <= len(epochs(run)) < 30
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
    # `fastvip run` of best.py trained this trial: of its copy, as best.py is this study's to rewrite
    copy = Path(t.user_attrs["recipe"])
    assert copy.parent == out and copy.name.startswith("base-") and copy.read_bytes() == (out / "best.py").read_bytes()
    assert f"$ fastvip run {copy} --out {run} --set epochs=30 lr=0.0001 " in (run / "run.log").read_text()


@pytest.fixture(scope="module")
def killed(pruned) -> dict:
    """SIGKILL of a tuner in the middle of trial 3, then two tuners at once on the one storage
    (the second with its own --out), for N = 5, with a diverging trial queued."""
    out, root, space = pruned["out"], pruned["root"], pruned["space"]
    common = ["--space", space, "--pruner", "none", "--quiet"]
    first = tuner([out / "best.py", *common, "--trials", 4, "--out", out, "--set", "epochs=30"], root / "first.log")
    wait_for_epoch(out / "trials" / "0003", first, root / "first.log")
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = load(out).get_trials()[3].state
    load(out).enqueue_trial({"lr": 1e9, "label_smoothing": 0.0})  # diverges: a FAIL, which does not count
    second = root / "second"
    sets = ["--set", "epochs=2", "max_nonfinite_steps=0"]
    runs = [tuner([out / "best.py", *common, "--trials", 5, "--out", out, *sets], root / "a.log"),
            tuner([out / "best.py", *common, "--trials", 5, "--out", second, *sets,
                   "--storage", f"sqlite:///{out / 'study.db'}"], root / "b.log")]
    rcs = [p.wait(timeout=400) for p in runs]
    logs = [(root / n).read_text() for n in ("a.log", "b.log")]
    return {**pruned, "at_kill": at_kill, "rcs": rcs, "logs": logs, "second": second}


def test_sigkill_of_the_tuner_then_rerun_finishes_the_trial(killed):
    out = killed["out"]
    assert killed["at_kill"] == optuna.trial.TrialState.RUNNING
    assert killed["rcs"] == [0, 0], killed["logs"]
    trials = load(out).get_trials()
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    t = trials[3]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["run_dir"] == str(out / "trials" / "0003")
    run = Path(t.user_attrs["run_dir"])
    log = events(run)
    # the dying tuner's run got SIGTERM and checkpointed; the rerun continued it (--resume)
    assert [e["signal"] for e in log if e["event"] == "stop"] == ["SIGTERM"]
    starts = [e for e in log if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from_epoch"] >= 1
    assert [e["epoch"] for e in epochs(run)] == list(range(1, 31))  # each epoch once
    assert t.value == epochs(run)[-1]["last_top1"]
    assert "--resume" in (run / "run.log").read_text()


def test_two_tuners_on_one_storage_share_n(killed):
    from fastvip import recipe as recipe_mod
    out, second = killed["out"], killed["second"]
    trials = load(out).get_trials()
    ended = [t for t in trials if t.state in ENDED]
    assert len(ended) == 5  # N in total, not per tuner
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert [t.params["lr"] for t in failed] == [1e9]  # the queued diverging trial: FAIL, with its error line
    assert "NaN/inf" in failed[0].user_attrs["last_log_line"] and failed[0].user_attrs["exit_code"] == 2
    assert not (Path(failed[0].user_attrs["run_dir"]) / "last.pt").exists()
    new = [t for t in ended if t.number >= 4]
    assert len(new) == 1 and new[0].state == optuna.trial.TrialState.COMPLETE  # in the failed one's place
    assert {Path(t.user_attrs["run_dir"]).parent for t in [*failed, *new]} <= {out / "trials", second / "trials"}
    best = load(out).best_trial
    for folder in (out, second):  # each tuner writes the shared study's outputs into its DIR
        rows = list(csv.DictReader((folder / "trials.csv").open()))
        assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 5
        assert recipe_mod.load_recipe(folder / "best.py").lr == best.params["lr"]
    # the trials tuned on from DIR/best.py ran a copy of it (best.py is rewritten, never its own base)
    assert Path(trials[3].user_attrs["recipe"]).name.startswith("base-")


def test_ctrl_c_stops_the_running_trial_cleanly(study, colour_data, tmp_path):
    """Ctrl-C at the terminal (SIGINT to the tuner's process group; its runs have sessions of their
    own): the running trial stops at a step boundary with a checkpoint and stays RUNNING for the
    same command to continue; the tuner exits 130 and leaves no process behind."""
    import psutil
    out, log = tmp_path / "study", tmp_path / "tuner.log"
    data = [f"train_data={colour_data['train']}", f"val_data={colour_data['val']}"]
    run = tuner([FAST, "--space", study["space"], "--trials", 1, "--out", out, "--quiet", "--set",
                 *[s for s in TINY if not s.startswith("epochs=")], "epochs=30", *data], log, start_new_session=True)
    wait_for_epoch(out / "trials" / "0000", run, log)
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=120) == 130, log.read_text()
    trial = load(out).get_trials()[0]
    assert trial.state == optuna.trial.TrialState.RUNNING  # the same command continues it
    run_dir = out / "trials" / "0000"
    stops = [e for e in events(run_dir) if e["event"] == "stop"]
    assert [e["signal"] for e in stops] == ["SIGTERM"] and len(epochs(run_dir)) < 30
    from fastvip.methods.model import load_checkpoint
    assert load_checkpoint(run_dir / "last.pt")["run_state"]["step"] == stops[0]["step"]  # written at the stop
    left = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]


def test_space_errors_are_one_line_before_any_trial(colour_data, tmp_path):
    data = [f"train_data={colour_data['train']}", f"val_data={colour_data['val']}"]
    cases = {
        "return {'lrr': trial.suggest_float('lr', 0.1, 0.5)}": "unknown recipe field 'lrr'; did you mean 'lr'?",
        "return {'epochs': trial.suggest_float('e', 1, 3)}": "recipe field 'epochs' expects int, got '1.0'",
        "return {'nesterov': trial.suggest_categorical('n', [1, 0])}": "recipe field 'nesterov' expects bool, got 1",
        "return {'lr': trial.suggest_categorical('lr', [0.1, 0.0])}": "(with lr=0.0): recipe: lr must be > 0",
        "return {'val_data': ''}": "the objective is val top-1, and the recipe has no val_data",
        "return [1]": "must return a dict",
    }
    for body, message in cases.items():
        space = tmp_path / "space.py"
        space.write_text(f"def space(trial):\n    {body}\n")
        out = tmp_path / "out"
        with pytest.raises(FastvipError) as e:
            tune([FAST, "--space", space, "--trials", 1, "--out", out, "--set", *data])
        assert message in str(e.value) and "\n" not in str(e.value)
        assert not out.exists()  # nothing started
    with pytest.raises(FastvipError, match="must define `def space"):
        (tmp_path / "empty.py").write_text("x = 1\n")
        tune([FAST, "--space", tmp_path / "empty.py", "--trials", 1, "--out", tmp_path / "o", "--set", *data])


def test_shipped_space_fits_its_recipe_and_stays_out_of_the_recipe_list(colour_data, capsys):
    from fastvip import recipe as recipe_mod
    from fastvip.cli import main
    path = REPO / "recipes" / "spaces" / "tiny_vipriors_fast.py"
    base = recipe_mod.resolve(FAST, [f"train_data={colour_data['train']}", f"val_data={colour_data['val']}"])
    assert space_mod.check_space(space_mod.load_space(path), base, path) == 5  # res_start's five choices
    capsys.readouterr()
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "tiny_vipriors_fast.py" in listed and "spaces" not in listed and "Search space" not in listed


def test_shipped_space_buys_epochs_with_resolution_not_time():
    """Every draw of the shipped space costs at most its budget of 64-px epochs, within one epoch,
    and a lower starting resolution buys more epochs."""
    spec = importlib.util.spec_from_file_location("proxy_space", REPO / "recipes" / "spaces" / "tiny_vipriors_fast.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from fastvip.recipe import load_recipe
    from fastvip.train.schedule import train_resolution
    base = load_recipe(FAST)
    for frac in (0.3, 0.6, 0.9):
        epochs = {}
        for start in (32, 40, 48, 56, 64):
            trial = optuna.trial.FixedTrial({"res_start": start, "ramp_end_frac": frac, "batch_size": 128,
                                             "lr": 0.4, "warmup_epochs": 1.0, "weight_decay": 5e-4,
                                             "label_smoothing": 0.1, "crop_scale_min": 0.35, "nesterov": True})
            o = mod.space(trial)
            recipe = dataclasses.replace(base, **o)  # the sizes the loop will train at, not the space's own sums
            sizes = [train_resolution(recipe, e) for e in range(recipe.epochs)]
            cost = sum(mod.image_cost(s) for s in sizes)
            assert mod.BUDGET - 1 < cost <= mod.BUDGET, (start, frac, o)
            assert sizes[-1] == 64 and (start == 64) == ("res_start" not in o)
            epochs[start] = o["epochs"]
        assert epochs[32] > epochs[64] and list(epochs.values()) == sorted(epochs.values(), reverse=True)
    assert mod.image_cost(64) == pytest.approx(1.0) and mod.image_cost(32) == pytest.approx(0.3925)


def test_plot_says_importance_needs_two_completed_trials(tmp_path):
    study = optuna.create_study(direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.3}, distributions=dist, value=50.0))
    assert report.importance(study, 1) == ({}, "parameter importance needs at least 2 completed trials (1 so far)")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.6}, distributions=dist, value=60.0))
    importances, why = report.importance(study, 2)
    assert set(importances) == {"lr"} and why == ""
    assert report.write_plot(study, tmp_path / "plots" / "tune.png").stat().st_size > 0


def test_parser_and_the_run_protocol_it_restates():
    args = parse(["r.py", "--space", "s.py", "--trials", 3, "--out", "d", "--set", "a=1", "b=2", "--set", "c=3"])
    assert (args.storage, args.study, args.jobs, args.pruner, args.startup_trials, args.timeout) == \
        (None, "fastvip", 1, "median", 5, None)
    assert args.func.__name__ == "cmd_tune" and args.set == [["a=1", "b=2"], ["c=3"]]
    # the tuner does not import fastvip.train (torch, the loaders): its constants must match
    stop = (REPO / "fastvip" / "train" / "stop.py").read_text()
    lock = (REPO / "fastvip" / "train" / "runlock.py").read_text()
    assert re.search(rf"^EXIT_TEMPFAIL = {trial_mod.EXIT_TEMPFAIL}\b", stop, re.M)
    assert re.search(rf'^LOCK_NAME = "{re.escape(trial_mod.RUN_LOCK_NAME)}"', lock, re.M)
    assert trial_mod.IN_USE in lock


def test_time_to_accuracy_records_commands_relative_to_the_repository():
    spec = importlib.util.spec_from_file_location("tta", REPO / "benchmarks" / "time_to_accuracy.py")
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    cmd = [REPO / "recipes" / "x.py", "--out", REPO / "tta_runs" / "x", "--set",
           f"train_data={REPO}/data/a.beton,{REPO}/data/b.beton", "val_data=/elsewhere/val.beton", "--resume"]
    assert tta.shown_command(cmd) == ("recipes/x.py --out tta_runs/x --set train_data=data/a.beton,data/b.beton "
                                      "val_data=/elsewhere/val.beton --resume")
    doc = json.loads((REPO / "benchmarks" / "time_to_accuracy.json").read_text())
    found = re.findall(r'"command": "([^"]*)"', json.dumps(doc))
    assert found and not [c for c in found if "/work/main/" in c or str(REPO) + "/" in c]
