"""Proxy, DeepBlueAI stage 2: ResNet-18 + ArcFace from the tiny-vipriors CE run (64 px, CPU)."""
# As seresnext101_arcface.py, scaled to the proxy: 4 epochs from the CE weights, s 30, m 0.5.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_resnet18_stage2.py")),
    arcface=True,
    arcface_scale=30.0,
    arcface_margin=0.5,
    arcface_weight=1.0,
    description="",
)
