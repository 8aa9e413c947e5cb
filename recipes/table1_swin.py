"""2021 Table 1: Swin-T, simple regularisation (224 px: timm's Swin has a fixed input size)."""
# The report does not name the Swin variant; Swin-T at its native 224 px here.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("table1_efficientnet_b2.py")),
    model="swin_tiny_patch4_window7_224",
    image_size=224,
    description="",
)
