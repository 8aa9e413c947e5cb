"""DeepBlueAI 2020 stage 2: TResNet-XL, CE + label smoothing + batch-hard triplet, 200 epochs from the CE run."""
# P x K = 64 classes x 4 images per batch of 256. Margin 0.3 and weight 1.0 are not in the report.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tresnet_xl.py")),
    epochs=200,
    init_from="runs/tresnet_xl",
    init_recipe="recipes/tresnet_xl.py",
    pk_samples=4,
    triplet_weight=1.0,
    triplet_margin=0.3,
    description="",
)
