"""2021 final: EfficientNet-B7 fine-tuned a few epochs at 448 px from the 320-px run."""
# Weights from recipes/efficientnet_b7.py, fresh optimizer and schedule. The report gives no
# fine-tune length or learning rate: 20 epochs at a fifth of the peak lr here.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("efficientnet_b7.py")),
    image_size=448,
    epochs=20,
    lr=0.001,
    warmup_epochs=1.0,
    init_from="runs/efficientnet_b7",
    init_recipe="recipes/efficientnet_b7.py",
    description="",
)
