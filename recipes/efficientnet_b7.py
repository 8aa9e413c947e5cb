"""2021 framework on EfficientNet-B7 (320 px), trained on train+val for the final ensemble."""
# For a validated run: --set train_data=data/train.beton val_data=data/val.beton
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2.py")),
    model="efficientnet_b7",
    train_data=["data/train.beton", "data/val.beton"],
    val_data="",
    description="",
)
