"""DeepBlueAI 2020: ResNeSt-101 at 448 px, CE + label smoothing, 250 epochs, batch 128."""
# As tresnet_xl.py, with the report's ResNeSt-101 settings: batch 128 (lr 0.05 by the
# linear rule), trained at 448 px as the report does (its ResNeSt stage 2 then trains
# at 224 from this run). timm's resnest101e is the ResNeSt-101 of the ResNeSt paper.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tresnet_xl.py")),
    model="resnest101e",
    image_size=448,
    batch_size=128,
    description="",
)
