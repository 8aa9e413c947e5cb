"""benchmarks/baseline_torchvision.py runs end to end on a tiny generated ImageFolder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import COLOURS, REPO, colour_image, write_image


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for k in range(3):
            for i in range(n):
                write_image(root / split / f"class_{k}" / f"{k}_{i}.JPEG", colour_image(rng, COLOURS[k], 40, 36))
    for i in range(11):
        write_image(root / "test" / "imgs" / f"img_{i}.JPEG", colour_image(rng, COLOURS[i % 3], 36, 40))
    return root


def baseline(*args, cwd):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "baseline_torchvision.py"), *map(str, args)],
                       check=False, capture_output=True, text=True, cwd=cwd, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_one_epoch_json_and_submission(tiny, tmp_path):
    from fastvip.infer.predict import read_submission
    p = baseline("--data", tiny, "--epochs", "1", "--limit-batches", "2", "--batch-size", "4", "--res", "32",
                 "--workers", "0", "--threads", "1", "--json", tmp_path / "r.json",
                 "--submission", tmp_path / "sub.csv", cwd=tmp_path)
    r = json.loads((tmp_path / "r.json").read_text())
    assert {"model", "epochs", "minutes", "val_top1", "wall_s", "img_per_s"} <= r.keys()
    assert r["model"] == "resnet18" and r["epochs"] == 1 and r["minutes"] is None
    assert 0.0 <= r["val_top1"] <= 100.0 and r["wall_s"] > 0 and r["img_per_s"] > 0
    assert r["val_top1_per_epoch"] == [r["val_top1"]]
    assert "epoch 1/1" in p.stdout and "final val_top1" in p.stdout
    sub = read_submission(tmp_path / "sub.csv")  # the format fastvip score reads
    assert sorted(sub) == sorted(f"img_{i}.JPEG" for i in range(11))
    assert all(0 <= v < 3 for v in sub.values())
    assert not list(tmp_path.glob("*.tmp"))


def test_minutes_budget_sets_the_epochs(tiny, tmp_path):
    p = baseline("--data", tiny, "--minutes", "0.05", "--limit-batches", "1", "--batch-size", "4", "--res", "32",
                 "--workers", "0", "--threads", "1", "--json", tmp_path / "r.json", cwd=tmp_path)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["minutes"] == 0.05 and r["epochs"] >= 1
    assert len(r["val_top1_per_epoch"]) == r["epochs"]
    assert "epochs fit in 0.05 min" in p.stdout
