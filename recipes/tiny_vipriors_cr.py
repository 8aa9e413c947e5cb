"""Proxy, 2021 Table 3: + Contrastive Regularization on two-view batches (ResNet-18, 64 px)."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_mt.py")),
    cr_weight=0.1,
    description="",
)
