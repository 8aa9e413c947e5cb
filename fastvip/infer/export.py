"""``fastvip export``: a run's weights as a plain timm model folder (``timm.models.save_for_hf``'s layout).

The folder holds ``model.safetensors`` (the timm model's own state dict) and ``config.json``,
so ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` rebuilds the classifier
without fastvip, and ``timm.data.resolve_data_config`` gives fastvip's eval preprocessing.
Heads timm lacks are converted or left out (see :func:`timm_model`); ``config.json``'s
``fastvip`` section says which.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvip import __version__, atomic
from fastvip.methods.augment import IMAGENET_MEAN, IMAGENET_STD
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.methods.model import build_model, find_weights, inference_weights, load_checkpoint
from fastvip.recipe import Recipe, eval_resolution, from_dict

EXPORT_FILES = ("config.json", "model.safetensors")
# pretrained_cfg fields that describe timm's own published weights, not the ones exported here
_SOURCE_FIELDS = ("tag", "license", "description", "origin_url", "paper_name", "paper_ids", "notes",
                  "label_names", "label_descriptions", "label_offset", "test_input_size", "test_crop_pct",
                  "test_pool_size")


def data_config(recipe: Recipe) -> dict:
    """fastvip's eval preprocessing in timm's terms (mean/std on timm's 0-1 pixel scale); the input
    size is the one fastvip validates at (``eval_size``, else ``image_size``)."""
    size = eval_resolution(recipe)
    return {"input_size": (3, size, size), "crop_pct": recipe.eval_crop,
            "crop_mode": "center", "interpolation": "bilinear",
            "mean": tuple(round(m / 255, 6) for m in IMAGENET_MEAN),
            "std": tuple(round(s / 255, 6) for s in IMAGENET_STD)}


def _classifier_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in ids}


def timm_model(net, recipe: Recipe, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The plain timm model holding ``net``'s weights, and the ``fastvip`` notes for ``config.json``.

    The auxiliary head is left out. An ArcFace head becomes the timm classifier with
    L2-normalised class weights and zero bias: its logits are ``|f| cos(theta)`` instead of
    ``s cos(theta)`` (f = the pooled features), so the class ranking is the same, the
    probabilities are not.
    """
    import timm
    model = timm.create_model(recipe.model, pretrained=False, num_classes=num_classes).eval()
    state = net.backbone.state_dict()
    head = _classifier_params(model)
    notes = {"classifier": "linear"}
    with torch.no_grad():
        # an ArcFace run's backbone had its classifier removed (reset_classifier(0))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if net.arcface is not None:
            if set(missing) != set(head):
                raise FastvipError(f"cannot convert the ArcFace head of {recipe.model}: timm's classifier "
                                   f"{sorted(head)} is not what the backbone lacks ({sorted(missing)[:3]})")
            missing = []
            weights = [p for p in head.values() if p.dim() >= 2]
            if (len(weights) != 1 or weights[0].shape[:2] != net.arcface.weight.shape
                    or weights[0].numel() != net.arcface.weight.numel()):
                raise FastvipError(f"cannot convert the ArcFace head of {recipe.model}: its classifier "
                                   f"is not one linear layer of shape {tuple(net.arcface.weight.shape)}")
            for p in head.values():
                if p.dim() >= 2:
                    p.copy_(F.normalize(net.arcface.weight.float(), dim=1).view_as(p))
                else:
                    p.zero_()
            notes.update(classifier="arcface_as_linear", arcface_scale=net.arcface.scale,
                         classifier_note="the ArcFace cosine head is exported as a linear layer with L2-normalised "
                                         "class weights and zero bias: the same predicted class as fastvip, not the "
                                         "same probabilities; fastvip's logits are arcface_scale * logits / "
                                         "norm(pre-logit features)")
    if missing or unexpected:
        first = (list(missing) or list(unexpected))[0]
        raise FastvipError(f"the checkpoint's backbone does not fit timm's {recipe.model} ({len(missing)} "
                           f"missing, {len(unexpected)} unexpected; first: {first})")
    if net.aux is not None:
        notes["aux_head"] = "left_out"
        notes["aux_note"] = "the auxiliary classifier is not exported" + (
            f"; fastvip's own predictions fuse it (fusion_weight {net.fusion_weight}), this model's do not"
            if net.fusion_weight > 0 else "")
    return model, notes


@torch.no_grad()
def check_same_outputs(net, model: torch.nn.Module, image_size: int) -> None:
    """Refuse to write an export whose outputs do not follow fastvip's on a random batch."""
    net.eval()
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    want = net.outputs(x)["logits"].float()
    got = model(x).float()
    if net.arcface is not None:  # the normalised linear layer leaves out the features' norm and s
        features = model.forward_head(model.forward_features(x), pre_logits=True).float()
        got = net.arcface.scale * got / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    tol = 1e-4 * max(1.0, float(want.abs().max()))
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=tol):
        diff = float((got - want).abs().max()) if got.shape == want.shape else f"shape {tuple(got.shape)}"
        raise FastvipError(f"timm's {type(model).__name__} does not reproduce fastvip's logits "
                           f"(max difference {diff}); nothing written")


def _looks_like_export(path: Path) -> bool:
    entries = list(os.scandir(path))
    return any(e.name == "config.json" for e in entries) and all(
        e.name in EXPORT_FILES and e.is_file(follow_symlinks=False) for e in entries)


def _check_out(out: Path, ckpt_path: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FastvipError(f"{out} exists and is not a folder")
    run = ckpt_path.resolve().parent
    target = out.resolve()
    if target == run or target in run.parents:
        raise FastvipError(f"{out} holds the checkpoint {ckpt_path}; export to another folder")
    if not out.exists() or not any(os.scandir(out)):
        return
    if not force:
        raise FastvipError(f"{out} is not empty; use --force to replace a previous export")
    if not _looks_like_export(out):
        raise FastvipError(f"--force: {out} does not look like an export (expected only "
                           f"{' and '.join(EXPORT_FILES)}); remove it yourself")


def _commit_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an old export there."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.chmod(tmp, 0o777 & ~atomic.umask())
    atomic.fsync_dir(tmp)
    if out.exists() and any(os.scandir(out)):
        # rename() replaces only an empty folder: move the old export aside first
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    atomic.fsync_dir(out.parent)


def export(run_or_ckpt, out_dir, *, weights: str = "best", force: bool = False,
           console: Console | None = None) -> dict:
    """Write ``out_dir`` (atomically) from a run directory's ``best.pt``/``last.pt`` or a checkpoint."""
    from timm.models import save_for_hf
    console = console or Console()
    ckpt_path = find_weights(run_or_ckpt, weights)
    out = Path(out_dir)
    _check_out(out, ckpt_path, force)
    ckpt = load_checkpoint(ckpt_path)
    if "recipe" not in ckpt or "classes" not in ckpt:
        raise FastvipError(f"{ckpt_path} is not a fastvip checkpoint")
    recipe, classes = from_dict(ckpt["recipe"]), [str(c) for c in ckpt["classes"]]
    net = build_model(recipe, len(classes))
    state, which = inference_weights(ckpt)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise FastvipError(f"{ckpt_path}: the weights do not fit its recipe's model "
                           f"({str(e).splitlines()[0]})") from None
    model, notes = timm_model(net, recipe, len(classes))
    size = eval_resolution(recipe)
    check_same_outputs(net, model, size)
    # config.json describes these weights and their preprocessing, not timm's published ones
    # (set on the model rather than passed as save_for_hf's data_config, which older timm lacks)
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_FIELDS}
    if tuple(cfg.get("input_size", ())[1:]) != (size,) * 2:
        cfg["pool_size"] = None  # timm's value is for its default input size
    model.pretrained_cfg = {**cfg, **data_config(recipe), "num_classes": len(classes)}
    info = {"version": __version__, "checkpoint": ckpt_path.name, "epoch": ckpt.get("epoch"),
            "weights": which, "image_size": recipe.image_size, "eval_size": size,
            "eval_crop": recipe.eval_crop,
            "resize_note": "fastvip evaluates the centred square of eval_crop x the shorter side, resized to "
                           "eval_size; timm's transform (shorter side to eval_size / crop_pct, bilinear, then "
                           "a centre crop) cuts the same window, resampled slightly differently", **notes}

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        try:
            save_for_hf(model, tmp, model_config={"label_names": classes, "fastvip": info},
                        safe_serialization=True)
        except (ValueError, RuntimeError) as e:
            raise FastvipError(f"timm cannot save {recipe.model}: {e}") from None
        _commit_dir(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    console.log(f"export: {recipe.model} ({len(classes)} classes, {which} weights of {ckpt_path.name}, "
                f"{notes['classifier']} classifier) -> {out}")
    return {"out": os.fspath(out), "checkpoint": os.fspath(ckpt_path), "weights": which,
            "classifier": notes["classifier"], "aux_head": notes.get("aux_head")}
