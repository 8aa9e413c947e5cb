"""Proxy, accuracy: the fast recipe's model and pipeline with the reports' regularisers over a long schedule (CPU, 64 px)."""
# benchmarks/time_to_accuracy.py's second fastvip entry: at least 30 % val top-1 (last epoch,
# train split only) in at most three times the plain baseline's wall time. tiny_vipriors_fast.py
# (resnet10t, resident loader, bf16, channels-last, batch 128) beats the baseline's accuracy
# in a third of its time; these settings spend the saved time on what both reports use against
# overfitting 50 images per class: CutMix and Mixup on most batches (2021 report: both;
# DeepBlueAI: CutMix), random erasing, label smoothing, and 150 epochs instead of 30. No
# AutoAugment: on 2 CPU cores its per-batch cost would take epochs away.
# Measured (benchmarks/RESULTS.md, Intel Xeon, seed 0, last epoch): 28.15 % in 7756 s, short
# of the 30 % target (the fast recipe: 27.40 % in 1457 s).
# Validation every 10th epoch. Raw weights: at the end of a cosine schedule an EMA adds little.
# An earlier version on ResNet-18 (120 epochs, 40 -> 64 px) was stopped after 46 epochs at
# 8.59 % (epoch 40, validated at 64 px while training at 40): benchmarks/RESULTS.md.
# Submission: the same recipe on train + val (--set train_data=TRAIN,VAL val_data=).
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_fast.py")),
    epochs=150,
    mix_prob=0.8,
    cutmix_alpha=1.0,
    mixup_alpha=0.2,
    random_erasing=0.25,
    description="",
)
