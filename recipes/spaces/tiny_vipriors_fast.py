"""Search space for recipes/tiny_vipriors_fast.py (`fastvip tune`): schedule, regularisation and
progressive resizing, every trial at the same compute.

    fastvip tune recipes/tiny_vipriors_fast.py --space recipes/spaces/tiny_vipriors_fast.py \
        --trials 40 --out runs/tune_tiny_vipriors_fast --set eval_every=3

The aim (benchmarks/time_to_accuracy.py): the plain baseline's 23.11 % val top-1 in at most a fifth
of the baseline's time on the same machine. The objective is accuracy alone, so the space keeps the
time fixed: ``epochs`` is not drawn but derived, the most epochs whose steps cost at most BUDGET
epochs at 64 px. Drawing a lower starting resolution (FFCV-style progressive resizing up to the
64-px images) therefore buys more epochs, not more time.

Cost of a training image at r px against 64 px, measured on the AMD EPYC box without native bf16
(throughput.py --mode model, fp32, batch 128: 314 / 180 / 123 img/s at 32 / 48 / 64 px): about
0.19 + 0.81 (r/64)^2. BUDGET: there the baseline's epoch took 211 s (30 epochs ~ 6300 s) and a
64-px epoch of this recipe ~85 s, so a fifth of the baseline is about 14 such epochs with start-up
and the last validation; 13 leaves a margin. On boxes with native bf16 an epoch is cheaper still.
"""
from fastvip.train.schedule import resolution_at

BUDGET = 13.0   # epochs' worth of 64-px training steps
FULL = 64       # the proxy's image size (the recipe's image_size)


def image_cost(size: int) -> float:
    """One training image at ``size`` px, in units of one at 64 px."""
    return 0.19 + 0.81 * (size / FULL) ** 2


def schedule(res_start: int, ramp_end_frac: float) -> tuple[int, int]:
    """(epochs, res_ramp_end): the most epochs whose ramp from ``res_start`` costs at most BUDGET."""
    best = (int(BUDGET), 0)
    for epochs in range(int(BUDGET), 4 * int(BUDGET)):
        ramp_end = max(1, round(ramp_end_frac * epochs))
        cost = sum(image_cost(resolution_at(e, res_start, FULL, 0, ramp_end, 8)) for e in range(epochs))
        if cost > BUDGET:
            break
        best = (epochs, ramp_end)
    return best


def space(trial) -> dict:
    res_start = trial.suggest_categorical("res_start", [32, 40, 48, 56, 64])
    # the fraction of the epochs after which training is at the full 64 px
    ramp_end_frac = trial.suggest_float("ramp_end_frac", 0.3, 0.9)
    if res_start < FULL:
        epochs, ramp_end = schedule(res_start, ramp_end_frac)
        resize = {"res_start": res_start, "res_ramp_start": 0, "res_ramp_end": ramp_end, "res_multiple": 8}
    else:
        epochs, resize = int(BUDGET), {}
    return {
        "epochs": epochs,
        **resize,
        "batch_size": trial.suggest_categorical("batch_size", [128, 256]),
        # peak lr at lr_batch (256) images, scaled linearly to batch_size; the base has 0.4
        "lr": trial.suggest_float("lr", 0.2, 1.6, log=True),
        "warmup_epochs": trial.suggest_float("warmup_epochs", 0.0, 2.0),
        "weight_decay": trial.suggest_float("weight_decay", 5e-5, 2e-3, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        # minimum area of the random-resized crop (64-px images; the base has 0.35)
        "crop_scale_min": trial.suggest_float("crop_scale_min", 0.15, 0.8),
        "nesterov": trial.suggest_categorical("nesterov", [True, False]),
    }
