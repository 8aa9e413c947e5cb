"""Proxy, time to accuracy: the plain baseline's method on tiny-vipriors, aiming at a third of its time (CPU, 64 px)."""
# benchmarks/time_to_accuracy.py races this recipe against benchmarks/baseline_torchvision.py
# (30 epochs of timm's ResNet-18). The same method and schedule as the baseline (SGD Nesterov,
# lr 0.2 at batch 128, weight decay 5e-4, label smoothing 0.1, one warm-up epoch then cosine,
# minimum crop area 0.35, 30 epochs at 64 px, raw weights); the time goes elsewhere:
# - timm's resnet10t (tiered stem, one block per stage) instead of ResNet-18: at 64 px both end
#   at a 2x2 map, and on the Intel Xeon box's two cores resnet10t's step ran 1.9-2.4x faster
#   (throughput.py --mode model --vary model=resnet18,resnet10t, bf16, channels-last);
# - the resident loader: images decoded once, where the baseline's DataLoader decodes JPEGs on
#   the cores that train;
# - bf16 autocast and channels-last (on CPUs with native bf16; --set amp=off elsewhere);
# - validation after epochs 10, 20 and 30 (the baseline validates after every epoch).
# Measured before (benchmarks/RESULTS.md, same box): ResNet-18 with progressive resizing
# 32 -> 56 px, 18 epochs, batch 64: 19.12 % in 1907 s against the baseline's 23.11 % in 4822 s.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_resnet18.py")),
    model="resnet10t",
    loader="resident",
    epochs=30,
    batch_size=128,
    crop_scale_min=0.35,
    nesterov=True,
    ema=False,
    amp="bf16",
    channels_last="on",
    eval_every=10,
    description="",
)
