"""DeepBlueAI 2020: SE-ResNeXt-101 32x4d at 224 px, CE + label smoothing, 250 epochs, batch 128."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tresnet_xl.py")),
    model="seresnext101_32x4d",
    batch_size=128,
    description="",
)
