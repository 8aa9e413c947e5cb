"""One short training run on the ``colour_data`` sets (tests/conftest.py) through a given loader,
for the loader tests: a run that starts, trains an epoch and validates, end to end."""
from __future__ import annotations

import json
from pathlib import Path


def one_epoch_run(colour_data: dict, out: Path, loader: str, **fields) -> list[dict]:
    """Train ``test_resnet`` for one epoch at 24 px with ``loader`` (and any other recipe
    ``fields``) into ``out``; the lines of its ``metrics.jsonl``, parsed."""
    from fastvip.console import Console
    from fastvip.recipe import Recipe
    from fastvip.train import run
    r = Recipe(model="test_resnet", loader=loader, train_data=str(colour_data["train"]),
               val_data=str(colour_data["val"]), image_size=24, epochs=1, batch_size=16, lr=0.4,
               warmup_epochs=0.5, crop_scale_min=0.3, workers=2, **fields).validate()
    run(r, out, console=Console(quiet=True))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
