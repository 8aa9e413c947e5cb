"""2021 Table 2: strong baseline with Mixup only (EfficientNet-B2)."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_strong_baseline.py")),
    cutmix_alpha=0.0,
    description="",
)
