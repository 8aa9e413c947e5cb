"""DDP under torchrun, for real: 2 gloo processes on CPU against 1 process with the same global batch.

The model is timm's ``test_convnext`` (LayerNorm, no BatchNorm): with BatchNorm each
process would normalise over its own half-batch and the runs would legitimately differ.
Without it, and without device augmentation (whose draws are keyed per process), the
2-process gradient (DDP's mean of two half-batch means) equals the 1-process gradient
of the same 16 images, so the weights agree up to float summation order.
"""
import dataclasses
import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import torch

from fastvip.console import Console
from fastvip.recipe import Recipe
from fastvip.train import run

from conftest import REPO

Q = Console(quiet=True)


def _recipe(data, **kw) -> Recipe:
    base = Recipe(model="test_convnext", train_data=str(data["train"]), val_data=str(data["val"]),
                  image_size=32, epochs=2, batch_size=16, lr=0.2, warmup_epochs=0.5, weight_decay=1e-4,
                  label_smoothing=0.1, crop_scale_min=0.3, workers=1, seed=3, device="cpu")
    return dataclasses.replace(base, **kw).validate()


def _torchrun(args, env, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(colour_data, trained_run, tmp_path, cpu_env):
    # with a distillation teacher (at another resolution: the batch is resized to its own on the device)
    recipe = _recipe(colour_data, teachers=(str(trained_run),), distill_weight=0.3)
    run(recipe, tmp_path / "one", console=Q)
    # TensorBoard on, which only process 0 may write (it changes no results)
    (tmp_path / "r.py").write_text(dataclasses.replace(recipe, tensorboard=True).to_text())
    two = tmp_path / "two"
    # stopped by SIGTERM (to `fastvip run --nproc`, which starts torchrun and passes the signal to
    # its workers) while process 0 writes epoch 1's checkpoint (held 1 s): both processes agree to
    # stop at step 10, inside epoch 2; then resumed mid-epoch under torchrun itself
    env = dict(cpu_env, FASTVIP_TEST_CHECKPOINT_DELAY="1")
    proc = subprocess.Popen([sys.executable, "-m", "fastvip", "run", str(tmp_path / "r.py"), "--out", str(two),
                             "--nproc", "2", "--quiet"], cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (two.is_dir() and any(p.name.startswith(".last.pt.tmp-") for p in two.iterdir())):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, proc.stderr.read().decode()[-3000:]
    assert _lines(two)[-1] | {"time": 0} == {"event": "stop", "signal": "SIGTERM", "epoch": 1, "step": 10, "time": 0}
    p = _torchrun(["-m", "fastvip", "run", str(tmp_path / "r.py"), "--out", str(two), "--resume", "--quiet"], cpu_env)
    assert p.returncode == 0, p.stderr[-3000:]

    one_lines, two_lines = _lines(tmp_path / "one"), _lines(two)
    starts = [line for line in two_lines if line["event"] == "start"]
    assert [s["world_size"] for s in starts] == [2, 2] and starts[1]["resumed_from_epoch"] == 1
    epochs = [line for line in two_lines if line["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]  # one line per epoch: only process 0 writes
    assert all(e["loss_distill"] > 0 for e in epochs)
    assert all(e["weights_in_sync"] for e in epochs)
    assert all(e["val_n"] == 48 for e in epochs)  # every val sample counted once over both shards
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per launch
    board = EventAccumulator(str(two / "tensorboard"))
    board.Reload()
    assert [(p.step, p.value) for p in board.Scalars("epoch/weights_in_sync")] == [(1, 1.0), (2, 1.0)]
    one_epochs = [line for line in one_lines if line["event"] == "epoch"]
    for a, b in zip(one_epochs, epochs):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
        assert abs(a["val_top1"] - b["val_top1"]) <= 100 / 48 + 1e-9  # at most one sample flips
    w1 = torch.load(tmp_path / "one" / "last.pt", weights_only=False)["model"]
    last = torch.load(two / "last.pt", weights_only=False)
    assert [t["path"] for t in last["teachers"]] == [str(trained_run)]  # resume checks it by digest
    w2 = last["model"]
    for k, v in w1.items():
        torch.testing.assert_close(w2[k], v, rtol=1e-3, atol=1e-4, msg=k)


def test_gradient_accumulation_matches_one_big_batch(colour_data, tmp_path):
    run(_recipe(colour_data, epochs=1), tmp_path / "a", console=Q)
    run(_recipe(colour_data, epochs=1, grad_accum=2), tmp_path / "b", console=Q)
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, rtol=1e-3, atol=1e-4, msg=k)


def test_loader_shards_are_disjoint_and_cover_the_data(colour_data, tmp_path, cpu_env):
    p = _torchrun([str(REPO / "tests" / "helpers" / "ddp_loader_probe.py"), str(colour_data["train"]),
                   str(colour_data["val"]), str(tmp_path)], dict(cpu_env, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    from fastvip.loaders import build_loader
    for kind in ("ffcv", "dali", "resident"):
        single = build_loader(kind, colour_data["train"], train=True, batch_size=16, image_size=16,
                              device=torch.device("cpu"), seed=5, workers=1)
        single.set_epoch(1)
        whole = [(x.clone(), y.clone()) for x, y in single]
        assert len(r0[f"{kind}_train"]) == len(r1[f"{kind}_train"]) == len(whole)
        for (x0, y0), (x1, y1), (x, y) in zip(r0[f"{kind}_train"], r1[f"{kind}_train"], whole):
            # process r holds its half of each global batch: together, exactly the 1-process batch
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        for b0, b1 in zip(r0[f"{kind}_pk"], r1[f"{kind}_pk"]):
            assert not set(b0.tolist()) & set(b1.tolist())  # whole classes per process
        (v0, n0), (v1, n1) = r0[f"{kind}_val"], r1[f"{kind}_val"]
        assert n0 + n1 == 48 and len(v0) + len(v1) == 48
        assert torch.equal(torch.sort(torch.cat([v0, v1])).values, torch.arange(4).repeat_interleave(12))
    # resident: one train store per machine, mapped by both processes; each eval store holds its shard
    (t0, e0), (t1, e1) = r0["resident_store"], r1["resident_store"]
    assert t0["where"] == t1["where"] == "host shared by 2 local processes" and t0["images"] == 96
    assert e0["images"] + e1["images"] == 48 and e0["where"] == "host"
    assert not list(Path("/dev/shm").glob("fastvip-resident-*"))  # the shared name is gone


def test_sync_bn_across_cpu_processes_is_a_clear_error(colour_data, tmp_path, monkeypatch):
    """Several CPU processes cannot run SyncBatchNorm; one process (any device) runs plain BN,
    which tests/test_framework.py's one-process CPU run of a sync_bn recipe covers."""
    import pytest

    from fastvip import distributed
    from fastvip.errors import FastvipError
    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.Dist(rank=0, world=2), device))
    with pytest.raises(FastvipError, match="sync_bn=true with 2 CPU processes: SyncBatchNorm needs CUDA"):
        run(_recipe(colour_data, sync_bn=True), tmp_path / "s", console=Q)
    assert not (tmp_path / "s").exists()  # refused before the run directory is made
