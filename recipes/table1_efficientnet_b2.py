"""2021 Table 1: EfficientNet-B2 with simple regularisation only (dropout), for the architecture comparison."""
# "only some simple regularizations like dropout": the strong baseline without AutoAugment,
# erasing, mixing and label smoothing. The report does not say the epochs of Table 1.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_strong_baseline.py")),
    auto_augment="none",
    random_erasing=0.0,
    mix_prob=0.0,
    label_smoothing=0.0,
    description="",
)
