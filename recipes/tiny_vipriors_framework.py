"""Proxy, 2021 framework (Table 3 last row, + fusion): ResNet-18 with SCE, Mean Teacher, CR (two views), aux head + fusion (64 px, CPU)."""
# efficientnet_b2.py's terms on the proxy model and schedule, built row by row
# (tiny_vipriors_strong_baseline -> _two_views -> _sce -> _mt -> _cr -> _aux -> this file).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_aux.py")),
    fusion_weight=0.3,
    description="",
)
