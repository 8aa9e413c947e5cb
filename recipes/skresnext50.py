"""2021 framework on a selective-kernel ResNeXt, in place of the report's DSK-ResNeXt101 (not in timm)."""
# DSK-ResNeXt101 (Sun et al.'s 2020 entry) is not in timm. timm's closest is skresnext50_32x4d:
# the selective-kernel ResNeXt block it builds on, at 50 layers instead of 101.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b3.py")),
    model="skresnext50_32x4d",
    description="",
)
