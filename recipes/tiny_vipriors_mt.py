"""Proxy, 2021 Table 3: + Mean Teacher (ResNet-18, 64 px)."""
# The proxy's schedule is short: the teacher's EMA decay is 0.998 and the consistency term
# ramps up over 2 epochs (efficientnet_b2_mt.py: 0.999 and 5 epochs of 460).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_sce.py")),
    mt_weight=1.0,
    mt_rampup_epochs=2.0,
    ema_decay=0.998,
    description="",
)
