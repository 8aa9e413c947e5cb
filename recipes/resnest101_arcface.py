"""DeepBlueAI 2020 stage 2: ResNeSt-101, CE + label smoothing + ArcFace, 200 epochs at 224 from the CE run."""
# The ArcFace head replaces the linear classifier and starts from its weights; CE + label
# smoothing acts on s*cos(theta), the ArcFace loss on s*cos(theta + m) of the dominant
# class. Not in the report: s = 30, m = 0.5, weight 1.0.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("resnest101.py")),
    image_size=224,
    epochs=200,
    init_from="runs/resnest101",
    init_recipe="recipes/resnest101.py",
    arcface=True,
    arcface_scale=30.0,
    arcface_margin=0.5,
    arcface_weight=1.0,
    description="",
)
