"""Proxy, DeepBlueAI stage 2: ResNet-18 + ArcFace from the tiny-vipriors CE run (64 px, CPU)."""
# As seresnext101_arcface.py, scaled to the proxy: 4 epochs from the CE weights, s 30, m 0.5.
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
    arcface=True,
    arcface_scale=30.0,
    arcface_margin=0.5,
    arcface_weight=1.0,
    description="",
)
