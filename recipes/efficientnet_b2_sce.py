"""2021 Table 3: + Symmetric Cross Entropy, on two-view batches (EfficientNet-B2)."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_two_views.py")),
    loss="sce",
    sce_alpha=1.0,  # the report writes H(p, q) + H(q, p): both weights 1
    sce_beta=1.0,
    description="",
)
