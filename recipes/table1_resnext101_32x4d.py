"""2021 Table 1: ResNeXt-101 32x4d, simple regularisation."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("table1_efficientnet_b2.py")),
    model="resnext101_32x4d",
    description="",
)
