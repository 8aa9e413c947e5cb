"""2021 Table 2: strong baseline with RandAugment instead of AutoAugment (EfficientNet-B2)."""
# torchvision's RandAugment defaults: 2 ops, magnitude 9 (the report gives none).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_strong_baseline.py")),
    auto_augment="randaugment",
    description="",
)
