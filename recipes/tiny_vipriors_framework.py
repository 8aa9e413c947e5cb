"""Proxy, 2021 framework: ResNet-18 with SCE, Mean Teacher, CR (two views), aux head + fusion (64 px, CPU)."""
# efficientnet_b2.py's terms on the proxy model and schedule; two-view batches double the
# images per step, so batch 64 images (128 views) keeps a step's cost near the CE recipe's.
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
    loss="sce",
    sce_alpha=1.0,
    sce_beta=1.0,
    mt_weight=1.0,
    mt_rampup_epochs=2.0,
    ema_decay=0.998,
    views=2,
    cr_weight=0.1,
    aux_weight=0.4,
    aux_stage=-2,
    fusion_weight=0.3,
    description="",
)
