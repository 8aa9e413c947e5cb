"""2021 framework on ResNet-152 (320 px, train+val), an ensemble member."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b3.py")),
    model="resnet152",
    description="",
)
