"""2021 Table 3: + auxiliary classifier on the penultimate stage (EfficientNet-B2)."""
# The auxiliary head (pool + dropout + linear) reads timm's feature_info stage -2 (stride 16).
# Not in the report: the stage and the weight (0.4).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_cr.py")),
    aux_weight=0.4,
    aux_stage=-2,
    description="",
)
