"""2021 Table 3 chain: strong baseline on two-view batches, no new loss (EfficientNet-B2)."""
# Not a row of the report: its Table 3 adds Mean Teacher and CR together with the second view
# of every image (Fig. 1). This row separates the view's cost and effect from theirs; the
# proxy chain (tiny_vipriors_two_views.py) has the same shape.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b2_strong_baseline.py")),
    views=2,
    description="",
)
