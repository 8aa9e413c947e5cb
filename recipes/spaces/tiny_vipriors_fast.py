"""Search space for recipes/tiny_vipriors_fast.py (`fastvip tune`): its schedule and regularisation.

    fastvip tune recipes/tiny_vipriors_fast.py --space recipes/spaces/tiny_vipriors_fast.py \
        --trials 40 --out runs/tune_tiny_vipriors_fast

The aim (benchmarks/time_to_accuracy.py): the plain baseline's 23.11 % val top-1 in at most a fifth
of its 4822 s on the two-core Xeon box, where the fast recipe's 30 epochs took 1457 s (~48 s an
epoch, validations included) for 27.4 %. The objective is accuracy alone, so the time is bounded by
the space: at most 20 epochs (about 960 s there). The base validates after every 10th epoch and
the last, so the pruner sees epoch 10 and the end; ``--set eval_every=2`` gives it more chances,
at the cost of the validations (and best.py then carries that setting: set it back before timing).
"""


def space(trial) -> dict:
    return {
        "epochs": trial.suggest_int("epochs", 12, 20),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256]),
        # peak lr at lr_batch (256) images, scaled linearly to batch_size; the base has 0.4
        "lr": trial.suggest_float("lr", 0.1, 1.6, log=True),
        "warmup_epochs": trial.suggest_float("warmup_epochs", 0.0, 2.0),
        "weight_decay": trial.suggest_float("weight_decay", 5e-5, 2e-3, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        # minimum area of the random-resized crop (64-px images; the base has 0.35)
        "crop_scale_min": trial.suggest_float("crop_scale_min", 0.15, 0.6),
        "nesterov": trial.suggest_categorical("nesterov", [True, False]),
    }
