"""Recipes are data: a Python file that builds a :class:`Recipe`.

A recipe file defines ``recipe = Recipe(...)``; a variant loads its base with
:func:`load_recipe` and ``dataclasses.replace``-s it. ``--set key=value``
overrides are parsed against the field types; an unknown key is an error
naming the closest field.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import runpy
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from fastvip.errors import FastvipError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AUGMENTS = ("none", "autoaugment", "randaugment")  # fastvip.methods.autoaugment.augment_batch kinds
LOSSES = ("ce", "sce")
OPTIMIZERS = ("sgd", "adamw", "rmsproptf")
SWITCHES = ("auto", "on", "off")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")
RESIDENT_STORAGES = ("pixels", "jpeg")  # fastvip.loaders.resident.STORAGES


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs. Field names are the DESIGN contract."""

    # data and model
    model: str = "resnet50"             # a timm model name (created with pretrained=False)
    train_data: str | list[str] = ""   # packed file, or a list merged once into <a>+<b>.beton beside the first
    val_data: str = ""                  # packed file for validation; empty = no validation
    loader: str = "ffcv"                # "ffcv", "dali" or "resident" (decoded once, kept in GPU or host memory)
    resident_size: int = 0              # resident loader: longest stored side in px; 0 = as packed
    resident_storage: str = "pixels"    # resident loader: pixels (decoded once) or jpeg (packed bytes, decoded per batch on the device)
    skip_damaged: bool = False          # leave out samples whose checksum fails (each reported, counted in metrics) instead of stopping
    image_size: int = 224               # train crop size (the last one, with progressive resizing)
    eval_size: int = 0                  # val and predict --tta none|flip size; 0 = image_size
    res_start: int = 0                  # progressive resizing: train size up to res_ramp_start; 0 = off
    res_ramp_start: int = 0             # epoch (from 0) at which the size starts to grow from res_start
    res_ramp_end: int = 0               # epoch from which the size is image_size (linear in between)
    res_multiple: int = 32              # sizes inside the ramp are rounded to a multiple of this
    crop_scale_min: float = 0.08        # random-resized-crop area range is [crop_scale_min, 1]
    eval_crop: float = 0.875            # eval: centre crop of this fraction of the shorter side
    eval_every: int = 1                 # validate after every N-th epoch and after the last
    tta_scales: tuple[int, ...] | None = None  # predict --tta multiscale sizes; None = image_size x (1, 320/224, 380/224, 448/224)
    tencrop_size: int | None = None     # predict --tta tencrop view size; None = 2 x image_size
    # augmentation on the device, after decode (see fastvip.methods.augment, fastvip.methods.mix)
    auto_augment: str = "none"          # none, autoaugment (torchvision ImageNet policy), randaugment (n=2, m=9)
    random_erasing: float = 0.0         # probability of one random-erasing box (pixel noise) per image
    mix_prob: float = 0.0               # probability that a batch is mixed by CutMix or Mixup
    cutmix_alpha: float = 1.0           # CutMix lam ~ Beta(a, a); 0 = no CutMix
    mixup_alpha: float = 0.0            # Mixup lam ~ Beta(a, a); 0 = no Mixup
    mix_switch_prob: float = 0.5        # with both on: probability that a mixed batch uses CutMix
    views: int = 1                      # 2 = two-view batches: every image twice, augmented independently
    pk_samples: int = 0                 # K of P x K class-balanced batches (P = batch / K); 0 = shuffled
    # schedule
    epochs: int = 90                    # the cosine schedule spans all of them
    batch_size: int = 256               # global images per step
    lr: float = 0.1                     # peak lr at lr_batch images, scaled linearly to batch_size
    lr_batch: int = 256                 # the batch size lr refers to
    warmup_epochs: float = 1.0          # linear warmup from warmup_lr to the peak
    warmup_lr: float = 0.0              # lr the warmup starts from
    min_lr: float = 0.0                 # cosine floor
    # optimiser
    optimizer: str = "sgd"              # timm optimizer name: sgd (momentum), adamw, rmsproptf
    optimizer_impl: str = "auto"        # auto (fused on CUDA where torch has it, else foreach), fused, foreach, loop
    momentum: float = 0.9               # SGD / RMSprop momentum
    nesterov: bool = False              # Nesterov momentum for sgd
    weight_decay: float = 1e-4          # not applied to norm layers and biases
    opt_eps: float | None = None        # optimiser epsilon; None = the optimiser's default (rmsproptf: 1e-10)
    # loss and regularisation (each active term is logged as loss_<name>; see fastvip.methods.objective)
    loss: str = "ce"                    # classification loss: ce, or sce (symmetric cross-entropy)
    label_smoothing: float = 0.1        # label smoothing of the (mixed) targets
    sce_alpha: float = 1.0              # SCE: weight of the cross-entropy term (2021 report: 1, 1)
    sce_beta: float = 1.0               # SCE: weight of the reverse cross-entropy term
    triplet_weight: float = 0.0         # batch-hard triplet loss on the L2-normalized embedding; 0 = off
    triplet_margin: float = 0.3         # triplet margin; 0 = soft margin (softplus)
    arcface: bool = False               # ArcFace head (cosine classifier) instead of the linear one
    arcface_scale: float = 30.0         # ArcFace scale s
    arcface_margin: float = 0.5         # ArcFace additive angular margin m (radians)
    arcface_weight: float = 1.0         # weight of the ArcFace margin loss
    cr_weight: float = 0.0              # Contrastive Regularization weight; 0 = off
    cr_tau: float = 0.1                 # CR temperature
    cr_delta: float = 1e-3              # CR: positives are views whose soft labels are closer than this (JS)
    mt_weight: float = 0.0              # Mean Teacher consistency weight (teacher = the EMA); 0 = off
    mt_rampup_epochs: float = 5.0       # sigmoid ramp-up of the consistency weight
    aux_weight: float = 0.0             # auxiliary classifier loss weight; 0 = no auxiliary head
    aux_stage: int = -2                 # backbone stage (timm feature_info index) the auxiliary head reads
    fusion_weight: float = 0.0          # inference: weight of the auxiliary probabilities (fusion)
    teachers: tuple[str, ...] = ()      # run dirs or checkpoints whose averaged probabilities the model distils
    distill_weight: float = 0.0         # loss = (1 - w) task + w T^2 KL(teachers || model); 0 = no distillation
    distill_temperature: float = 1.0    # T: both softmaxes of the distillation term at temperature T
    drop_rate: float = 0.0              # dropout before the classifier
    drop_path_rate: float = 0.0         # stochastic depth (timm models that support it)
    ema: bool = False                   # keep an exponential moving average of the weights
    ema_decay: float = 0.9998           # EMA (and Mean Teacher) decay per step (warmed up early on)
    max_nonfinite_steps: int = 20       # steps with a NaN/inf loss skipped before the run stops
    # speed
    amp: str = "auto"                   # auto (bf16 on CUDA, off on CPU), bf16, fp16, off
    channels_last: str = "auto"         # channels-last memory format: auto (as measured per model), on, off
    compile: bool = False               # torch.compile the model
    sync_bn: bool = False               # SyncBatchNorm across processes (CUDA, torchrun)
    grad_accum: int = 1                 # micro-batches per optimiser step (batch_size is per step)
    workers: int = 0                    # loader threads; 0 = all cores
    device: str = "auto"                # auto (cuda when available), cuda, cpu
    # run
    init_from: str = ""                 # run dir or checkpoint to start from (weights only)
    init_recipe: str = ""               # the recipe that trains init_from (named when it is missing)
    seed: int = 0                       # weights init, order, crops and flips
    out: str = ""                       # run directory; empty = runs/<recipe file name>
    checkpoint_minutes: float = 0.0     # also write a resumable mid-epoch checkpoint this often; 0 = at epoch ends only
    tensorboard: bool = False           # also write TensorBoard scalars to <run dir>/tensorboard/ (pip install 'fastvip[tensorboard]')
    description: str = ""               # one line for `fastvip recipes` (default: the docstring)

    def __post_init__(self):
        # the on/off switch also takes booleans (Python recipes, checkpoints of older versions)
        # and their spellings (--set channels_last=true)
        value = self.channels_last
        if isinstance(value, str) and value not in SWITCHES:
            try:
                value = _parse_bool(value)
            except ValueError:
                pass  # validate() names the choices
        if isinstance(value, bool):
            object.__setattr__(self, "channels_last", "on" if value else "off")
        # recipe.json holds a list: a tuple again, so a reloaded recipe equals the one saved
        for name in ("tta_scales", "teachers"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def train_files(self) -> list[str]:
        return list(self.train_data) if isinstance(self.train_data, (list, tuple)) else \
            ([self.train_data] if self.train_data else [])

    @property
    def uses_ema(self) -> bool:
        """The EMA is kept for ``ema`` and as the Mean Teacher."""
        return self.ema or self.mt_weight > 0

    def shipped_weights(self) -> str:
        """The weights this recipe ships, fixed before the run: ``"ema"`` when it keeps an EMA
        (``ema``, or Mean Teacher's teacher), else ``"raw"``. Reported figures (``last_top1``) are
        of these weights, so choosing raw or EMA by their val score cannot inflate them."""
        return "ema" if self.uses_ema else "raw"

    def scaled_lr(self) -> float:
        """Peak learning rate for this batch size (linear scaling rule)."""
        return self.lr * self.batch_size / self.lr_batch

    def validate(self) -> "Recipe":
        """One-line errors for values that cannot work (before any data is touched)."""
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (0 <= self.distill_weight <= 1, "distill_weight must be between 0 and 1"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
            (bool(self.teachers) == (self.distill_weight > 0),
             "teachers and distill_weight > 0 go together (a teacher with weight 0 would run for nothing)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr_batch >= 1, "lr_batch must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.image_size >= 8, "image_size must be >= 8"),
            (self.eval_size == 0 or self.eval_size >= 8, "eval_size must be >= 8 (or 0 = image_size)"),
            (self.res_start == 0 or self.res_start >= 8, "res_start must be >= 8 (or 0 = no progressive resizing)"),
            (self.res_multiple >= 1, "res_multiple must be >= 1"),
            (self.checkpoint_minutes >= 0, "checkpoint_minutes must be >= 0 (0 = at epoch ends only)"),
            (0 <= self.res_ramp_start <= self.res_ramp_end, "res_ramp_start must be in [0, res_ramp_end]"),
            (0 < self.eval_crop <= 1, "eval_crop must be in (0, 1]"),
            (self.eval_every >= 1, "eval_every must be >= 1 (1 = validate every epoch)"),
            (0 < self.crop_scale_min <= 1, "crop_scale_min must be in (0, 1]"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.max_nonfinite_steps >= 0, "max_nonfinite_steps must be >= 0"),
            (self.amp in AMP_CHOICES, f"amp must be one of {', '.join(AMP_CHOICES)}"),
            (self.resident_storage in RESIDENT_STORAGES,
             f"resident_storage must be one of {', '.join(RESIDENT_STORAGES)}"),
            (self.loader != "resident" or self.resident_storage == "pixels" or self.resident_size == 0,
             "resident_size shrinks the pixel store; with resident_storage jpeg it must be 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.optimizer_impl in OPTIMIZER_IMPLS, f"optimizer_impl must be one of {', '.join(OPTIMIZER_IMPLS)}"),
            (self.optimizer_impl != "fused" or self.optimizer in ("sgd", "adamw"),
             f"optimizer_impl=fused: torch has no fused {self.optimizer}; use foreach"),
            (self.channels_last in SWITCHES, f"channels_last must be one of {', '.join(SWITCHES)}"),
            (self.device in ("auto", "cuda", "cpu"), "device must be auto, cuda or cpu"),
            (bool(self.model), "model is empty"),
            (self.auto_augment in AUGMENTS, f"auto_augment must be one of {', '.join(AUGMENTS)}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (0 <= self.random_erasing <= 1, "random_erasing must be in [0, 1]"),
            (0 <= self.mix_prob <= 1, "mix_prob must be in [0, 1]"),
            (self.cutmix_alpha >= 0 and self.mixup_alpha >= 0, "cutmix_alpha and mixup_alpha must be >= 0"),
            (self.views in (1, 2), "views must be 1 or 2"),
            (self.pk_samples >= 0, "pk_samples must be >= 0"),
            (self.pk_samples == 0 or self.batch_size % self.pk_samples == 0,
             f"batch_size {self.batch_size} must be a multiple of pk_samples {self.pk_samples}"),
            (self.triplet_weight >= 0 and self.triplet_margin >= 0, "triplet_weight/margin must be >= 0"),
            (self.arcface_scale > 0 and 0 <= self.arcface_margin < 3.1416, "arcface_scale > 0, margin in [0, pi)"),
            (min(self.cr_weight, self.mt_weight, self.aux_weight) >= 0, "loss weights must be >= 0"),
            (self.cr_tau > 0 and self.cr_delta >= 0, "cr_tau must be > 0 and cr_delta >= 0"),
            (self.cr_weight == 0 or self.views == 2, "cr_weight > 0 needs two-view batches (views=2)"),
            (self.mt_weight == 0 or self.views == 2,
             "mt_weight > 0 needs two-view batches (views=2): the teacher sees the other view of each image"),
            (self.tta_scales is None or (len(self.tta_scales) > 0 and min(self.tta_scales) >= 8),
             "tta_scales must be sizes >= 8 (or None)"),
            (self.tencrop_size is None or self.tencrop_size >= 8, "tencrop_size must be >= 8 (or None)"),
            (self.opt_eps is None or self.opt_eps > 0, "opt_eps must be > 0 (or None)"),
            (self.opt_eps is None or self.optimizer != "sgd", "opt_eps: sgd has no epsilon"),
            (0 <= self.fusion_weight < 1, "fusion_weight must be in [0, 1)"),
            (self.fusion_weight == 0 or self.aux_weight > 0, "fusion_weight needs the auxiliary head (aux_weight > 0)"),
            (self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
             f"grad_accum must be >= 1 and divide batch_size {self.batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastvipError(f"recipe: {message}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        """A readable, valid-Python rendering of the resolved recipe."""
        lines = ["from fastvip.recipe import Recipe", "", "recipe = Recipe("]
        lines += [f"    {f.name}={getattr(self, f.name)!r}," for f in fields(self)]
        return "\n".join(lines + [")", ""])


FIELD_TYPES = typing.get_type_hints(Recipe)


def eval_resolution(recipe: Recipe) -> int:
    """The size a recipe is validated at, and predicted at with ``--tta none|flip``."""
    return recipe.eval_size or recipe.image_size


def validates(recipe: Recipe, epoch: int) -> bool:
    """Whether epoch ``epoch`` (from 0) ends with validation: every ``eval_every``-th, and the last."""
    return (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs


def field_names() -> list[str]:
    return [f.name for f in fields(Recipe)]


def field_help() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, comment)`` for every field; comments come from the class source."""
    import inspect
    import re
    comments = {}
    for line in inspect.getsource(Recipe).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    out = []
    for f in fields(Recipe):
        kind = FIELD_TYPES[f.name]
        type_name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
        out.append((f.name, type_name, repr(f.default), comments.get(f.name, "")))
    return out


def recipes_dir() -> Path:
    """The shipped recipes (``recipes/`` of a checkout, installed as ``fastvip.recipes``)."""
    from importlib.resources import files
    return Path(str(files("fastvip.recipes")))


def find_recipe(path: str | Path) -> Path:
    """``path`` itself, or else a shipped recipe of that name (``recipes/NAME.py``, ``NAME.py`` or ``NAME``)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_absolute() and path.parent.name in ("", "recipes") and len(path.parts) <= 2:
        shipped = recipes_dir() / (path.name if path.suffix == ".py" else f"{path.name}.py")
        if shipped.is_file():
            return shipped
    raise FastvipError(f"recipe {path} does not exist (`fastvip recipes` lists the shipped ones)")


def run_python_file(path: Path, kind: str) -> dict:
    """Run a plain-Python config file (a recipe, a tuning space) and return its namespace; an
    exception inside it is a one-line error naming the file."""
    try:
        return runpy.run_path(str(path), run_name=f"fastvip_{kind}_{Path(path).stem}")
    except FastvipError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken file is bad input
        raise FastvipError(f"{kind} {path} failed to load: {type(e).__name__}: {e}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Run a recipe file and return its ``recipe``."""
    path = find_recipe(path)
    namespace = run_python_file(path, "recipe")
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise FastvipError(f"recipe {path} must define `recipe = Recipe(...)`")
    if not recipe.description and namespace.get("__doc__"):
        recipe = dataclasses.replace(recipe, description=namespace["__doc__"].strip().splitlines()[0])
    return recipe


def recipe_description(path: str | Path) -> str:
    """First line of a recipe file's docstring (without running it)."""
    import ast
    try:
        doc = ast.get_docstring(ast.parse(Path(path).read_text()))
    except (OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc else ""


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError


def parse_value(key: str, text: str):
    """Parse ``text`` as the type of recipe field ``key`` (one-line error when it is not)."""
    kind = FIELD_TYPES[key]
    args = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else ()
    if type(None) in args:  # an optional field: none (or nothing) leaves it unset
        if text.strip().lower() in ("", "none"):
            return None
        (kind,) = [a for a in args if a is not type(None)]
    try:
        if typing.get_origin(kind) is tuple:  # tuple[int, ...]: comma-separated
            item = typing.get_args(kind)[0]
            return tuple(item(p.strip()) for p in text.split(",") if p.strip())
        if kind is bool:
            return _parse_bool(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # str | list[str]
            parts = [p for p in text.split(",") if p]
            return parts if len(parts) > 1 else text
    except ValueError:
        pass
    else:
        raise FastvipError(f"recipe field {key!r} has an unsupported type {kind}")
    name = f"comma-separated {typing.get_args(kind)[0].__name__}s" if typing.get_origin(kind) is tuple else \
        getattr(kind, "__name__", str(kind))
    if type(None) in args:
        name += " or none"
    raise FastvipError(f"recipe field {key!r} expects {name}, got {text!r}")


def parse_overrides(pairs: list[str]) -> dict:
    """``["a=1", "b=x"]`` -> typed dict; unknown keys are errors with a suggestion."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FastvipError(f"--set expects key=value, got {pair!r}")
        if key not in FIELD_TYPES:
            close = difflib.get_close_matches(key, field_names(), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise FastvipError(f"unknown recipe field {key!r}{hint}")
        out[key] = parse_value(key, value)
    return out


def resolve(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file, apply ``--set`` overrides and validate."""
    recipe = load_recipe(path)
    recipe = dataclasses.replace(recipe, **parse_overrides(overrides or []))
    return recipe.validate()


def from_dict(data: dict) -> Recipe:
    """Rebuild a saved recipe (``recipe.json`` in a run directory)."""
    known = {k: v for k, v in data.items() if k in FIELD_TYPES}
    return Recipe(**known)


def dumps(recipe: Recipe) -> str:
    return json.dumps(recipe.to_dict(), indent=2) + "\n"
