"""2021 final: EfficientNet-B7 trained entirely at 448 px (framework on, train+val)."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b7.py")),
    image_size=448,
    description="",
)
