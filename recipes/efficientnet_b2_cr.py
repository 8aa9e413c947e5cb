"""2021 Table 3: + Contrastive Regularization on two-view batches (EfficientNet-B2)."""
# Every image appears twice (independent crops, flips, AutoAugment and erasing; the same mix
# partner and lam), so the two views are positives; delta 1e-3 keeps positives instance-wise.
# Not in the report: tau (0.1, SupCon's), delta and the weight (0.1).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_mt.py")),
    cr_weight=0.1,
    cr_tau=0.1,
    cr_delta=1e-3,
    description="",
)
