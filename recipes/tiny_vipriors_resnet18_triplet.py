"""Proxy, DeepBlueAI stage 2: ResNet-18 + batch-hard triplet from the tiny-vipriors CE run (64 px, CPU)."""
# As resnest101_triplet.py, scaled to the proxy: P x K = 32 x 4, 4 epochs from the CE weights.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_resnet18_stage2.py")),
    pk_samples=4,
    triplet_weight=1.0,
    triplet_margin=0.3,
    description="",
)
