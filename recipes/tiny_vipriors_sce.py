"""Proxy, 2021 Table 3: + Symmetric Cross Entropy, on two-view batches (ResNet-18, 64 px)."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_two_views.py")),
    loss="sce",
    sce_alpha=1.0,  # H(p, q) + H(q, p), as the report writes it
    sce_beta=1.0,
    description="",
)
