"""DeepBlueAI 2020 stage 2: SE-ResNeXt-101, CE + label smoothing + ArcFace, 200 epochs from the CE run."""
# s = 30, m = 0.5 and weight 1.0 are not in the report.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("seresnext101.py")),
    epochs=200,
    init_from="runs/seresnext101",
    init_recipe="recipes/seresnext101.py",
    arcface=True,
    arcface_scale=30.0,
    arcface_margin=0.5,
    arcface_weight=1.0,
    description="",
)
