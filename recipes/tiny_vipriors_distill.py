"""Proxy, distillation: tiny_vipriors_strong's model and schedule, taught by an ensemble of three strong runs (CPU)."""
# Issue #41: fold the ensemble back into one network of the best single model's size. The
# teachers are three runs of tiny_vipriors_strong.py (seeds 0, 1, 2) on train + val merged,
# made by (N = 0, 1, 2)
#   fastvip run recipes/tiny_vipriors_strong.py --out runs/distill/strong_sN_trainval \
#       --set seed=N train_data=data/tiny-vipriors/train.beton,data/tiny-vipriors/val.beton val_data=
# The train-split figure (benchmarks/distill_train_split.sh) uses the same loss settings on the shorter
# schedule of tiny_vipriors_tuned.py instead.
# The student is an ordinary strong run (resnet10t, 64 -> 96 px, CutMix/Mixup, 100 epochs) whose
# loss is mostly the teachers': they see its exact augmented batch (mixed images included), the
# "consistent teaching" of Beyer et al. (CVPR 2022, "Knowledge distillation: a good teacher is
# patient and consistent"), at temperature 1. A little of the hard-label term stays (w = 0.9)
# because the teachers have seen the very images they label here. Not tuned: these values are
# fixed before the study's runs.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_strong.py")),
    teachers=("runs/distill/strong_s0_trainval", "runs/distill/strong_s1_trainval",
              "runs/distill/strong_s2_trainval"),
    distill_weight=0.9,
    distill_temperature=1.0,
    description="",
)
