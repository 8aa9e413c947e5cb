"""2021 Table 3: + Mean Teacher (EfficientNet-B2)."""
# The teacher is the EMA of the student (decay 0.999, warmed up); the consistency term is
# KL(student || teacher), ramped up over 5 epochs. Weight, decay and ramp are not in the report.
# Two-view batches (Fig. 1): the student on one view of an image against the teacher on the other.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_sce.py")),
    mt_weight=1.0,
    mt_rampup_epochs=5.0,
    ema_decay=0.999,
    description="",
)
