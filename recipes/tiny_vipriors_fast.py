"""Proxy, time to accuracy: the plain baseline's method on tiny-vipriors, with bf16 and progressive resizing (CPU, 64 px)."""
# benchmarks/time_to_accuracy.py races this recipe against benchmarks/baseline_torchvision.py
# (30 epochs). Same model and method as the baseline (timm ResNet-18, SGD Nesterov, weight decay
# 5e-4, label smoothing 0.1, one warm-up epoch then cosine, minimum crop area 0.35); the time
# goes elsewhere. Measured (benchmarks/RESULTS.md, 2026-12-02): 21.42 % val in 616 s against the
# baseline's 22.80 % in 1715 s; the same accuracy about 2.1-2.4x sooner, short of the 3x aimed at.
# - bf16 autocast: 1.4-2.0x per proxy epoch on a CPU with native bf16 (avx512_bf16;
#   benchmarks/RESULTS.md). On a CPU without it, use --set amp=off; on a GPU bf16 is the default.
# - progressive resizing (FFCV's ImageNet recipes): most epochs at 40-56 px, the last ones at
#   64, validated at 64 throughout;
# - fewer epochs, and no EMA: at the end of a cosine schedule it adds little, and validating it
#   too would cost a second pass over val every epoch.
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tiny_vipriors_resnet18.py")),
    epochs=18,
    crop_scale_min=0.35,
    nesterov=True,
    ema=False,
    amp="bf16",
    res_start=40,
    res_ramp_start=3,
    res_ramp_end=14,
    res_multiple=8,
    eval_size=64,
    description="",
)
