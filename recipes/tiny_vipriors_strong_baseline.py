"""Proxy, 2021 Table 3 "strong baseline": ResNet-18 on tiny-vipriors with mixup + cutmix and random erasing (64 px)."""
# The first row of the proxy Table 3 chain (strong baseline -> _two_views -> _sce -> _mt -> _cr ->
# _aux -> tiny_vipriors_framework), each file adding one technique, as efficientnet_b2_*.py do at
# full size. The proxy's CE recipe plus the strong baseline's data augmentation (mixup alpha 0.5,
# cutmix alpha 1.0 on every batch, erasing 0.25). Batch 64 images in every row, so the two-view
# rows see the same images per step (as 128 views).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_resnet18.py")),
    batch_size=64,
    mix_prob=1.0,
    mixup_alpha=0.5,
    cutmix_alpha=1.0,
    random_erasing=0.25,
    description="",
)
