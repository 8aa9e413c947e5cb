"""Proxy, 2021 Table 3: + auxiliary classifier on the penultimate stage (ResNet-18, 64 px)."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_cr.py")),
    aux_weight=0.4,
    aux_stage=-2,
    description="",
)
