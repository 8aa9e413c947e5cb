"""DeepBlueAI 2020: TResNet-XL, CE + label smoothing, SGD, 1-epoch warmup, cosine, 250 epochs at 224 px."""
# Report settings (Sec. III-B): batch 256, SGD momentum 0.9, lr 0.1 x B/256, linear warmup
# from 0 over the first epoch, cosine, weight decay 1e-4, 250 epochs, label smoothing 0.1.
# Train on train+val merged for the final submission: train_data=[train.beton, val.beton].
# Not yet in this recipe: AutoAugment and CutMix (p=0.5) -- they come with the
# DeepBlueAI-method issue and will be switched on here.
from fastvip.recipe import Recipe

recipe = Recipe(
    model="tresnet_xl",
    train_data="data/train.beton",
    val_data="data/val.beton",
    loader="ffcv",
    image_size=224,
    epochs=250,
    batch_size=256,
    lr=0.1,
    lr_batch=256,
    warmup_epochs=1.0,
    warmup_lr=0.0,
    optimizer="sgd",
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    label_smoothing=0.1,
    amp="auto",
    seed=0,
)
