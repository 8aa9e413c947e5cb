"""Attract-and-Repulse 2021, Table 2/3 "strong baseline": EfficientNet-B2, RMSprop, AutoAugment, mixup+cutmix, 460 epochs at 320 px."""
# Report Sec. 3.2-3.3: RMSprop (alpha 0.9, momentum 0.9; timm's rmsproptf, TF-style epsilon),
# 8 GPUs x 16 images with sync-BN, lr 0.005 at batch 128, cosine, 3 warmup epochs linear from
# 1e-6, weight decay 1e-5, 320 px; AutoAugment, random erasing, dropout 0.3, label smoothing,
# mixup (alpha 0.5) + cutmix (alpha 1.0), 460 epochs. Trained on train, validated on val.
# Not in the report (timm's ImageNet defaults): label smoothing 0.1, random erasing p 0.25,
# one of mixup/cutmix on every batch, chosen with probability 0.5 each.
# sync_bn needs CUDA and torchrun: on one process it does nothing, on CPU --set sync_bn=false.
from fastvip.recipe import Recipe

recipe = Recipe(
    model="efficientnet_b2",
    train_data="data/train.beton",
    val_data="data/val.beton",
    loader="ffcv",
    image_size=320,
    crop_scale_min=0.08,
    auto_augment="autoaugment",
    random_erasing=0.25,
    mix_prob=1.0,
    mixup_alpha=0.5,
    cutmix_alpha=1.0,
    mix_switch_prob=0.5,
    epochs=460,
    batch_size=128,
    lr=0.005,
    lr_batch=128,
    warmup_epochs=3.0,
    warmup_lr=1e-6,
    optimizer="rmsproptf",
    momentum=0.9,
    weight_decay=1e-5,
    label_smoothing=0.1,
    drop_rate=0.3,
    sync_bn=True,
    amp="auto",
    seed=0,
)
