"""TensorBoard scalars (tensorboard=true) mirror metrics.jsonl, survive a resume, and need the extra."""
import dataclasses
import json
import sys

import pytest

from fastvip.train import metrics
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.recipe import Recipe, parse_overrides
from fastvip.train import run

Q = Console(quiet=True)


def _recipe(data) -> Recipe:
    return Recipe(model="test_resnet", train_data=str(data["train"]), val_data=str(data["val"]),
                  image_size=16, epochs=2, batch_size=16, lr=0.4, warmup_epochs=0.5, crop_scale_min=0.3,
                  workers=2, seed=3, tensorboard=True).validate()


def _event_files(board) -> set:
    return set(board.glob("events.out.tfevents.*"))


def test_scalars_mirror_metrics_and_a_resume_drops_orphans(colour_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    run_dir, board = tmp_path / "r", tmp_path / "r" / "tensorboard"
    recipe = _recipe(colour_data)
    run(recipe, run_dir, console=Q)
    order = [*_event_files(board)]
    # what a killed run leaves behind: points past its checkpoint (here the last one, step 12)
    with SummaryWriter(str(board)) as w:
        for step in (13, 20):
            w.add_scalar("step/train_loss", 99.0, step)
            w.add_scalar("step/lr", 99.0, step)
    order += _event_files(board) - set(order)
    run(recipe, run_dir, console=Q, resume=True)  # nothing left to train; it marks its restart
    order += _event_files(board) - set(order)
    assert len(order) == 3  # process 0 opens one writer per launch
    # file names start with whole seconds; name them in the order they were written, as
    # launches seconds apart are
    for i, path in enumerate(order):
        path.rename(board / f"events.out.tfevents.{i}")

    acc = EventAccumulator(str(board))
    acc.Reload()
    epochs = [line for line in metrics.read(run_dir / "metrics.jsonl") if line["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    numeric = {(e["epoch"], k): v for e in epochs for k, v in e.items()
               if isinstance(v, (int, float)) and k not in ("event", "epoch", "time")}
    keys = {k for _, k in numeric}
    assert {"train_loss", "loss_ce", "val_top1", "val_top5", "lr", "img_per_s", "nonfinite_steps"} <= keys
    assert set(acc.Tags()["scalars"]) == {f"epoch/{k}" for k in keys} | {"step/train_loss", "step/lr"}
    written = {(p.step, tag[6:]): p.value for tag in acc.Tags()["scalars"] if tag.startswith("epoch/")
               for p in acc.Scalars(tag)}
    assert len(written) == sum(len(acc.Scalars(f"epoch/{k}")) for k in keys)  # one point per epoch
    assert written == pytest.approx(numeric, rel=1e-6)

    # 96 images / 16 = 6 steps an epoch, logged every 10 steps and at each epoch's end
    lr = acc.Scalars("step/lr")
    assert [p.step for p in lr] == [6, 10, 12]
    assert [lr[0].value, lr[2].value] == pytest.approx([epochs[0]["lr"], epochs[1]["lr"]], rel=1e-6)
    loss = acc.Scalars("step/train_loss")
    assert [p.step for p in loss] == [6, 10, 12] and all(0 < p.value < 5 for p in loss)
    assert json.loads((run_dir / "recipe.json").read_text())["tensorboard"] is True
    # logging is no part of the results: a resume may turn it off (or on)
    run(dataclasses.replace(recipe, tensorboard=False), run_dir, console=Q, resume=True)
    assert len(_event_files(board)) == 3


def test_without_the_package_it_is_a_one_line_error_before_training(colour_data, tmp_path, monkeypatch):
    assert parse_overrides(["tensorboard=true"]) == {"tensorboard": True}
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(FastvipError, match=r"^tensorboard=true needs the tensorboard package "
                                           r"\(pip install 'fastvip\[tensorboard\]'\)") as e:
        run(_recipe(colour_data), tmp_path / "r", console=Q)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()  # nothing was set up
