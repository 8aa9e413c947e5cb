"""run / predict / score under faults: NaN losses, SIGKILL mid-run and mid-checkpoint, bad files."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.recipe import Recipe
from fastvip.train import run

Q = Console(quiet=True)
# 40 px: epochs long enough (about a second here) for a kill to land inside one
SETTINGS = ["model=test_resnet", "image_size=40", "batch_size=16", "lr=0.4", "warmup_epochs=0.5",
            "crop_scale_min=0.3", "workers=2", "ema=true", "ema_decay=0.9", "seed=3"]


def _recipe(data, **kw):
    base = Recipe(model="test_resnet", train_data=str(data["train"]), val_data=str(data["val"]),
                  image_size=24, epochs=2, batch_size=16, lr=0.4, warmup_epochs=0.5, crop_scale_min=0.3,
                  workers=2, ema=True, ema_decay=0.9, seed=3)
    return dataclasses.replace(base, **kw).validate()


def _epochs(run_dir):
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if l["event"] == "epoch"], [l for l in lines if l["event"] == "start"]


def _nan_on_calls(monkeypatch, bad_calls):
    import fastvip.methods.losses as losses_mod
    real = losses_mod.soft_cross_entropy
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    monkeypatch.setattr(losses_mod, "soft_cross_entropy", fake)


def test_nonfinite_steps_are_skipped_and_counted(colour_data, tmp_path, monkeypatch):
    # the host check (one read per step) and the fused kernel's found_inf (no read: how CUDA
    # runs skip) skip the same steps and leave the same weights, EMA included
    weights = {}
    for impl in ("foreach", "fused"):
        _nan_on_calls(monkeypatch, {2, 3})  # 6 steps per epoch
        run(_recipe(colour_data, optimizer_impl=impl), tmp_path / impl, console=Q)
        epochs, _ = _epochs(tmp_path / impl)
        assert [e["nonfinite_steps"] for e in epochs] == [2, 0], impl
        assert all(e["train_loss"] == e["train_loss"] for e in epochs)  # finite: NaN steps excluded
        assert epochs[-1]["val_top1"] > 25.0
        ckpt = torch.load(tmp_path / impl / "last.pt", weights_only=False)
        weights[impl] = {**ckpt["model"], **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}
    for k, v in weights["foreach"].items():
        if v.is_floating_point():
            torch.testing.assert_close(weights["fused"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_too_many_nonfinite_steps_stop_with_last_good_checkpoint(colour_data, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, set(range(7, 100)))  # from the first step of epoch 2 on
    with pytest.raises(FastvipError, match=r"NaN/inf in 4 steps \(max_nonfinite_steps=3\); stopped in "
                                           r"epoch 2, the last good checkpoint is .*last.pt"):
        run(_recipe(colour_data, max_nonfinite_steps=3), tmp_path / "r", console=Q)
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def _start_run(data, run_dir, env, *extra):
    cmd = [sys.executable, "-m", "fastvip", "run", "recipes/tresnet_xl.py", "--out", str(run_dir), "--set",
           *SETTINGS, "epochs=3", f"train_data={data['train']}", f"val_data={data['val']}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(predicate, proc, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("timed out")


def _epoch_lines(run_dir):
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"event": "epoch"') if path.exists() else 0


def _finish(data, run_dir, env):
    p = subprocess.run([sys.executable, "-m", "fastvip", "run", "recipes/tresnet_xl.py", "--out", str(run_dir),
                        "--resume", "--quiet", "--set", *SETTINGS, "epochs=3", f"train_data={data['train']}",
                        f"val_data={data['val']}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def reference(colour_data, tmp_path_factory):
    """The uninterrupted 3-epoch run the killed-and-resumed runs must reproduce."""
    ref = tmp_path_factory.mktemp("ref") / "r"
    # tresnet_xl.py's AutoAugment and CutMix included: the killed runs use that recipe
    run(_recipe(colour_data, epochs=3, image_size=40, auto_augment="autoaugment", mix_prob=0.5), ref, console=Q)
    return torch.load(ref / "last.pt", weights_only=False)


def _assert_same_as_reference(run_dir, reference):
    final = torch.load(run_dir / "last.pt", weights_only=False)
    assert final["epoch"] == 3 and final["run_state"]["step"] == reference["run_state"]["step"]
    for name, t in reference["model"].items():
        torch.testing.assert_close(final["model"][name], t, rtol=1e-5, atol=1e-6, msg=name)


def test_sigkill_mid_epoch_then_resume(colour_data, tmp_path, cpu_env, reference):
    run_dir = tmp_path / "r"
    proc = _start_run(colour_data, run_dir, cpu_env)
    _wait_for(lambda: _epoch_lines(run_dir) >= 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # inside epoch 2
    proc.wait()
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] in (1, 2)
    _finish(colour_data, run_dir, cpu_env)
    epochs, starts = _epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]  # each epoch once
    assert starts[0]["resumed_from_epoch"] is None and starts[-1]["resumed_from_epoch"] in (1, 2)
    _assert_same_as_reference(run_dir, reference)


def test_one_writer_timed_checkpoint_and_stale_lock(colour_data, tmp_path, cpu_env, reference):
    # a checkpoint at every step (checkpoint_minutes tiny), each write held 0.3 s: a slow first run
    run_dir = tmp_path / "r"
    env = dict(cpu_env, FASTVIP_TEST_CHECKPOINT_DELAY="0.3")
    proc = _start_run(colour_data, run_dir, env, "checkpoint_minutes=0.00001")
    _wait_for(lambda: (run_dir / "metrics.jsonl").exists(), proc)
    # a second run of the directory fails at once, naming the holder, and touches nothing
    second = subprocess.run([sys.executable, "-m", "fastvip", "run", "recipes/tresnet_xl.py", "--out", str(run_dir),
                             "--resume", "--set", *SETTINGS, "epochs=3", f"train_data={colour_data['train']}",
                             f"val_data={colour_data['val']}"], cwd=REPO, env=cpu_env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode != 0
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and f"in use by another run (pid {proc.pid} on " in err[0], second.stderr
    _wait_for(lambda: _epoch_lines(run_dir) >= 1, proc)
    time.sleep(1.0)  # a few steps into epoch 2, each one checkpointed
    os.killpg(proc.pid, signal.SIGKILL)  # the lock dies with it
    proc.wait()
    from fastvip.methods.model import load_checkpoint
    ckpt = load_checkpoint(run_dir / "last.pt")  # weights_only: tensors and plain values
    mid = ckpt["run_state"]["mid_epoch"]
    assert ckpt["epoch"] == 1 and mid["steps"] >= 1, mid
    _finish(colour_data, run_dir, cpu_env)  # --resume: not blocked by the dead run's lock
    epochs, starts = _epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and len(starts) == 2
    _assert_same_as_reference(run_dir, reference)


def test_sigterm_stops_with_a_resumable_checkpoint(colour_data, tmp_path, cpu_env, reference):
    run_dir = tmp_path / "r"
    proc = _start_run(colour_data, run_dir, cpu_env)
    _wait_for(lambda: _epoch_lines(run_dir) >= 1, proc)
    proc.send_signal(signal.SIGTERM)  # inside epoch 2
    assert proc.wait(timeout=60) == 75, proc.stderr.read().decode()
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stop = lines[-1]
    assert stop["event"] == "stop" and stop["signal"] == "SIGTERM" and stop["step"] > 6, stop
    _finish(colour_data, run_dir, cpu_env)
    epochs, starts = _epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and len(starts) == 2
    _assert_same_as_reference(run_dir, reference)


def test_loading_never_executes_code(colour_data, tmp_path):
    from fastvip.infer.predict import predict
    made = tmp_path / "made"
    torch.save({"model": {}, "inference": {}, "x": _Planted(made)}, tmp_path / "evil.pt")
    with pytest.raises(FastvipError, match="holds objects other than tensors.*FASTVIP_TRUST_CHECKPOINTS=1"):
        predict(tmp_path / "evil.pt", colour_data["val"], console=Q)
    assert not made.exists()


class _Planted:
    """Unpickling this creates a file: the kind of object a loader must refuse."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_sigkill_during_checkpoint_write_keeps_previous(colour_data, tmp_path, cpu_env, reference):
    run_dir = tmp_path / "r"
    env = dict(cpu_env, FASTVIP_TEST_CHECKPOINT_DELAY="2")
    proc = _start_run(colour_data, run_dir, env)

    def writing_second_last():
        # epoch 1's last.pt is in place and epoch 2's is being written
        return (run_dir / "last.pt").exists() and any(p.name.startswith(".last.pt.tmp-") and p.stat().st_size
                                                      for p in run_dir.iterdir())
    _wait_for(writing_second_last, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 1  # previous one, intact
    assert _epoch_lines(run_dir) == 1
    _finish(colour_data, run_dir, cpu_env)
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]
    epochs, starts = _epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [s["resumed_from_epoch"] for s in starts] == [None, 1]
    _assert_same_as_reference(run_dir, reference)


def test_missing_val_file_errors_before_training(colour_data, tmp_path):
    with pytest.raises(FastvipError, match="missing_val.beton does not exist"):
        run(_recipe(colour_data, val_data=str(tmp_path / "missing_val.beton")), tmp_path / "r", console=Q)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_predict_and_score_reject_wrong_files(colour_data, tmp_path):
    from conftest import make_colour_tree
    from fastvip.data.pack import pack
    from fastvip.infer.predict import predict, score, write_submission
    run(_recipe(colour_data, epochs=1), tmp_path / "r", console=Q)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FastvipError, match="not a readable checkpoint"):
        predict(tmp_path / "notes.txt", colour_data["val"], console=Q)
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(FastvipError, match="not a fastvip checkpoint"):
        predict(tmp_path / "other.pt", colour_data["val"], console=Q)
    with pytest.raises(FastvipError, match="meta.json beside it"):
        predict(tmp_path / "r", tmp_path / "notes.txt", console=Q)
    make_colour_tree(tmp_path / "three", 3, seed=9, classes=3)
    pack(tmp_path / "three", tmp_path / "three.beton", console=Q)
    with pytest.raises(FastvipError, match="3 classes that differ from the model's 4"):
        predict(tmp_path / "r", tmp_path / "three.beton", console=Q)
    with pytest.raises(FastvipError, match="is not a CSV text file"):
        score(colour_data["val"], colour_data["val"])  # a .beton is not a CSV
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(FastvipError, match="first line must be"):
        score(tmp_path / "empty.csv", tmp_path / "empty.csv")
    write_submission(tmp_path / "header_only.csv", [], [])
    with pytest.raises(FastvipError, match="share no image ids"):
        score(tmp_path / "header_only.csv", tmp_path / "header_only.csv")


def test_settings_the_device_cannot_run_are_refused_before_the_run_directory(colour_data, tmp_path):
    out = tmp_path / "r"
    recipe = Recipe(train_data=str(colour_data["train"]), amp="fp16", device="cpu")
    with pytest.raises(FastvipError, match="amp=fp16 needs CUDA"):
        run(recipe, out, console=Console(quiet=True))
    assert not out.exists()
