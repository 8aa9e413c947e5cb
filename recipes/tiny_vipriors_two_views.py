"""Proxy, 2021 Table 3 chain: strong baseline on two-view batches, no new loss (ResNet-18, 64 px)."""
# Every image appears twice per batch, augmented independently (crop, flip, erasing; the same
# mix partner and lam), both views trained with the same loss: batch augmentation. Mean
# Teacher and CR need these two views; this row measures what the second view buys, and
# costs, on its own, so the rows after it show the terms' effect rather than the views'.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_strong_baseline.py")),
    views=2,
    description="",
)
