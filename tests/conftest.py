"""Small image sets made at test time, packed once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastvip.console import Console
from fastvip.data import ffcv_compat  # noqa: F401 - the cheap FFCV import, for the test modules that import it
from fastvip.data.pack import pack

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` each worker (and every run it starts) keeps to one thread: two
    # workers with two OpenMP threads each on a 2-core machine spin against each other.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 60)]


def write_image(path: Path, rgb: np.ndarray, fmt: str = "JPEG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, format=fmt, **kw)
    return path


def colour_image(rng, colour, h: int, w: int) -> np.ndarray:
    """A noisy image whose dominant colour is its class: an easy, learnable task."""
    base = np.array(colour, np.float32)[None, None] * rng.uniform(0.6, 1.0)
    img = base + rng.normal(0, 25, (h, w, 3))
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y:y + h // 3, x:x + w // 3] = rng.uniform(0, 255, 3)  # a distractor patch
    return img.clip(0, 255)


def make_colour_tree(root: Path, per_class: int, seed: int, classes: int = 4) -> Path:
    """``root/<class>/*.JPEG`` with varied, non-square sizes (exercises the crops)."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        for i in range(per_class):
            h, w = int(rng.integers(28, 64)), int(rng.integers(28, 64))
            write_image(root / f"class_{k}" / f"c{k}_{i}.JPEG", colour_image(rng, COLOURS[k], h, w),
                        quality=92)
    return root


def pytest_collection_modifyitems(config, items):
    """``cuda``-marked tests are skipped, with the reason, where torch sees no CUDA device."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (the GPU check runs these: tools/gpu_check.sh)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def shared_dir(tmp_path_factory, name: str, build) -> Path:
    """A folder ``build(folder)`` fills once per test session, under pytest-xdist too: the first
    worker to ask builds it under a file lock, the others wait and read the same folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock
    folder = tmp_path_factory.getbasetemp().parent / name  # the folder every worker's basetemp is in
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def _colour_sets(root: Path) -> None:
    quiet = Console(quiet=True)
    make_colour_tree(root / "src" / "train", 24, seed=1)
    make_colour_tree(root / "src" / "val", 12, seed=2)
    rng = np.random.default_rng(3)
    for i in range(10):
        write_image(root / "src" / "test" / "imgs" / f"img_{i}.JPEG",
                    colour_image(rng, COLOURS[i % 4], 40, 40))
    for split in ("train", "val", "test"):
        pack(root / "src" / split, root / f"{split}.beton", workers=2, console=quiet)


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> dict:
    """Packed train (4 x 24) and val (4 x 12) colour sets, plus an unlabelled test set."""
    root = shared_dir(tmp_path_factory, "colour", _colour_sets)
    return {**{split: root / f"{split}.beton" for split in ("train", "val", "test")}, "root": root}


@pytest.fixture(scope="session")
def trained_run(colour_data, tmp_path_factory) -> Path:
    """One trained run shared by the predict, TTA, export and FFCV-file tests (read it, never write in it).

    EMA on, a non-default eval crop (exports and predict must carry it) and channels-last
    (that path end to end).
    """
    import json

    from fastvip.recipe import Recipe
    from fastvip.train import run

    def train(folder: Path) -> None:
        r = Recipe(model="test_resnet", train_data=str(colour_data["train"]), val_data=str(colour_data["val"]),
                   image_size=24, eval_crop=0.8, epochs=2, batch_size=16, lr=0.4, warmup_epochs=0.5,
                   crop_scale_min=0.3, workers=2, ema=True, ema_decay=0.9, channels_last="on")
        run(r, folder / "run", console=Console(quiet=True))

    run_dir = shared_dir(tmp_path_factory, "trained", train) / "run"
    start = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["channels_last"] is True
    return run_dir


@pytest.fixture
def cpu_env(monkeypatch):
    """Keep subprocess CLIs on CPU and quiet about CUDA."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return dict(os.environ)
