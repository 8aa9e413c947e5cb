"""Demo: ResNet-18 from scratch on scikit-learn's digits (10 classes), about a minute on CPU."""
import dataclasses
from pathlib import Path

from fastvip.recipe import load_recipe

# A variant of the DeepBlueAI recipe: same loss/optimiser/schedule family, sized for
# 600 8x8 digits upscaled to 32 px.
recipe = dataclasses.replace(
    load_recipe(Path(__file__).with_name("tresnet_xl.py")),
    model="resnet18",
    train_data="demo_out/train.beton",
    val_data="demo_out/val.beton",
    image_size=32,
    crop_scale_min=0.35,  # an 8%-area crop of a digit rarely shows the digit
    epochs=20,
    batch_size=32,
    lr=0.4,  # peak 0.05 at batch 32
    warmup_epochs=1.0,
    weight_decay=5e-4,
    ema=True,
    ema_decay=0.99,
    auto_augment="none",  # 8x8 digits upscaled: AutoAugment and CutMix cost more than they give in 20 epochs
    mix_prob=0.0,
    tta_scales=(32,),  # upscaled 8x8 digits: TTA at 2x the training size fell to 12 % (benchmarks/RESULTS.md)
    tencrop_size=32,
    description="",
)
