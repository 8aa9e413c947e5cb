"""2021 Table 1: EfficientNet-B4, simple regularisation."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("table1_efficientnet_b2.py")),
    model="efficientnet_b4",
    description="",
)
