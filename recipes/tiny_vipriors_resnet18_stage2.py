"""Proxy, DeepBlueAI stage 2 control: the tiny-vipriors CE run trained for the stage-2 length more, CE only (64 px, CPU)."""
# The stage-2 rows (tiny_vipriors_resnet18_triplet.py, _arcface.py) import this recipe and add
# one loss each (triplet also its class-balanced P x K batches), so a stage-2 gain over the CE
# run that this control also shows comes from the extra epochs, not from the loss.
# 4 epochs from the CE weights with a fresh optimiser and a short, low schedule.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_resnet18.py")),
    epochs=4,
    warmup_epochs=0.5,
    lr=0.04,  # peak 0.02 at batch 128: a short stage 2 refines the CE weights (0.1 lost them, measured)
    init_from="runs/tiny_vipriors_resnet18",
    init_recipe="recipes/tiny_vipriors_resnet18.py",
    description="",
)
