"""2021 framework, complete (Table 3 last row): EfficientNet-B2 with SCE, Mean Teacher, CR, auxiliary classifier and fusion."""
# Auxiliary fusion: predict / validation use 0.7 x final + 0.3 x auxiliary probabilities
# (the weight is not in the report). The b3-b7, ResNet-152, SE-ResNet-152 recipes import this.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_aux.py")),
    fusion_weight=0.3,
    description="",
)
