"""``fastvip predict`` (probabilities + VIPriors submission) and ``fastvip score``."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
from pathlib import Path

import numpy as np
import torch

from fastvip.loaders import build_loader

from fastvip import atomic
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.packed import check_label_indices
from fastvip.methods.augment import normalize
from fastvip.infer.evaluate import logits_batches
from fastvip.methods.model import (amp_dtype, autocast, build_model, find_weights, inference_weights, load_checkpoint,
                    resolve_device, use_channels_last)
from fastvip.recipe import eval_resolution, from_dict
from fastvip.infer.tta import TTA_CHOICES, cut, plan, tta_sizes

SUBMISSION_HEADER = ("Image IDs", "Predictions")


def predict(run_or_ckpt, data, *, weights: str = "best", tta: str = "none", out=None,
            submission=None, batch_size: int | None = None, scales: list[int] | None = None,
            tencrop_size: int | None = None, size: int | None = None, fusion: float | None = None,
            console: Console | None = None) -> dict:
    """Class probabilities for every sample of ``data``; optionally a submission CSV.

    ``tta``: see :mod:`fastvip.infer.tta`. ``none`` and ``flip`` use the loader's eval crop at ``size``,
    by default the recipe's ``eval_size`` (else ``image_size``: so ``none`` reproduces the validation
    top-1); ``multiscale`` and
    ``tencrop`` decode each image once and cut all views on the device, at ``scales`` /
    ``tencrop_size`` if given, else the recipe's ``tta_scales`` / ``tencrop_size``. ``fusion``
    replaces the recipe's ``fusion_weight`` (0: the main classifier alone; the 2021 report's
    fusion row is the same trained model predicted with and without it).
    """
    console = console or Console()
    if tta not in TTA_CHOICES:
        raise FastvipError(f"--tta must be one of {', '.join(TTA_CHOICES)}")
    ckpt_path = find_weights(run_or_ckpt, weights)
    ckpt = load_checkpoint(ckpt_path)
    if "recipe" not in ckpt or "classes" not in ckpt:
        raise FastvipError(f"{ckpt_path} is not a fastvip checkpoint")
    recipe, classes = from_dict(ckpt["recipe"]), list(ckpt["classes"])
    if fusion is not None:
        try:
            recipe = dataclasses.replace(recipe, fusion_weight=fusion).validate()
        except FastvipError as e:
            raise FastvipError(f"--fusion {fusion}: {e}") from None
    device = resolve_device(recipe.device)
    amp = amp_dtype(recipe.amp, device)
    channels_last, _ = use_channels_last(recipe, device)
    batch_size = batch_size or recipe.batch_size
    # resolved once: the views use these and the .npz records them
    scales, tencrop_size = tta_sizes(recipe, scales, tencrop_size)
    scales = scales if tta == "multiscale" else None
    tencrop_size = tencrop_size if tta == "tencrop" else None
    if size is not None and size < 8:
        raise FastvipError(f"--size must be >= 8 (got {size})")
    size = size or eval_resolution(recipe)
    if tta in ("multiscale", "tencrop"):
        from fastvip.loaders.ffcv import FFCVLoader  # whole images on a canvas; views are cut on the device
        loader = FFCVLoader(data, train=False, batch_size=batch_size, image_size=size,
                            device=device, workers=recipe.workers, canvas=True)
    else:
        loader = build_loader(recipe.loader, data, train=False, batch_size=batch_size,
                              image_size=size, device=device, workers=recipe.workers,
                              eval_crop=recipe.eval_crop)
    packed = loader.packed
    if not packed.sidecar:  # written by FFCV's own tools: its labels index the model's classes
        check_label_indices(packed, classes, "the model")
    elif packed.labelled and packed.classes != classes:
        raise FastvipError(f"{data} has {packed.num_classes} classes that differ from the "
                           f"model's {len(classes)}")

    model = build_model(recipe, len(classes)).to(device)
    state, which = inference_weights(ckpt)
    model.load_state_dict(state)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    chunks = []
    t0 = time.perf_counter()
    with console.progress("predict", packed.num_samples) as bar:
        if tta in ("none", "flip"):
            flip = tta == "flip"
            for logits, _ in logits_batches(model, _flip_views(loader) if flip else loader, device, amp,
                                            channels_last):
                probs = logits.softmax(dim=1)
                if flip:  # rows alternate image / mirrored image
                    probs = probs.view(-1, 2, probs.shape[1]).mean(dim=1)
                chunks.append(probs.cpu())
                bar.advance(len(probs))
        else:
            for probs in _tta_probs(model, loader, packed, tta, recipe, device, amp, scales, tencrop_size,
                                    channels_last):
                chunks.append(probs.cpu())
                bar.advance(len(probs))
    seconds = time.perf_counter() - t0
    probs = torch.cat(chunks).numpy()
    if len(probs) != packed.num_samples:
        raise FastvipError(f"predicted {len(probs)} samples but {data} holds {packed.num_samples}")

    result = {"n": len(probs), "img_per_s": len(probs) / seconds, "weights": which, "size": size,
              "fusion": recipe.fusion_weight,
              "checkpoint": os.fspath(ckpt_path), "top1": None}
    if packed.labelled:
        result["top1"] = 100.0 * float((probs.argmax(1) == packed.labels).mean())
    if out is None and Path(run_or_ckpt).is_dir():
        out = Path(run_or_ckpt) / "predictions" / f"{Path(data).stem}-{tta}.npz"
    if out is not None:
        save_probs(out, packed.ids, probs, classes, tta=tta, labels=packed.labels, scales=scales,
                   tencrop_size=tencrop_size)
        result["out"] = os.fspath(out)
    if submission is not None:
        write_submission(submission, packed.ids, probs.argmax(1))
        result["submission"] = os.fspath(submission)
    at = f", {size} px" if tta in ("none", "flip") else ""
    console.log(f"predict: {len(probs)} images at {result['img_per_s']:,.0f} img/s ({which} weights, tta {tta}{at})")
    return result


@torch.no_grad()
def _tta_probs(model, loader, packed, tta, recipe, device, amp, scales, tencrop_size, channels_last):
    """Mean probabilities over the views of ``tta``, one batch of whole images at a time."""
    model.eval()
    offset = 0
    for canvas, _ in loader:
        idx = np.arange(offset, offset + len(canvas))
        offset += len(canvas)
        views = plan(tta, packed.heights[idx], packed.widths[idx], idx, image_size=eval_resolution(recipe),
                     eval_crop=recipe.eval_crop, scales=scales, tencrop_size=tencrop_size, seed=recipe.seed)
        images = canvas.float()
        total = None
        for view in views:
            with autocast(device, amp):
                logits = model(normalize(cut(images, view), channels_last=channels_last))
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
        yield total / len(views)


def _flip_views(loader):
    """Interleave each image with its mirror image: one forward pass covers both views."""
    for images, labels in loader:
        both = torch.stack([images, images.flip(3)], dim=1).flatten(0, 1)
        yield both, labels.repeat_interleave(2)


def save_probs(path, ids, probs, classes, *, tta: str, labels=None, scales=None, tencrop_size=None) -> None:
    """``.npz`` with ids, float32 probabilities, class names and the TTA used (atomic).

    Not float16: its 11-bit significand tied the top two classes of 5 of 10,000 val images
    (a fused resnet10t), and a tie's argmax is the lower class index, not predict's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    arrays = {"ids": np.asarray(ids, dtype=str), "probs": probs.astype(np.float32),
              "classes": np.asarray(classes, dtype=str), "tta": np.asarray(tta)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if scales is not None:
        arrays["tta_scales"] = np.asarray(scales, dtype=np.int64)
    if tencrop_size is not None:
        arrays["tta_tencrop_size"] = np.asarray(tencrop_size, dtype=np.int64)
    np.savez(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())


def load_probs(path) -> dict:
    """Read a probabilities ``.npz`` written by ``predict`` (one-line errors for other files)."""
    path = Path(path)
    if not path.is_file():
        raise FastvipError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds for non-npz input
        raise FastvipError(f"{path} is not a probabilities .npz: {type(e).__name__}: {e}") from None
    missing = {"ids", "probs", "classes"} - data.keys()
    if missing:
        raise FastvipError(f"{path} lacks {', '.join(sorted(missing))} (not written by fastvip predict)")
    if data["probs"].shape != (len(data["ids"]), len(data["classes"])):
        raise FastvipError(f"{path}: probs shape {data['probs'].shape} does not match its ids and classes")
    return data


def ensemble(paths, *, weights=None, submission=None, out=None) -> dict:
    """Weighted mean of the probabilities in ``paths`` (same ids, same classes)."""
    if len(paths) < 1:
        raise FastvipError("ensemble needs at least one .npz")
    weights = [1.0] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths):
        raise FastvipError(f"--weights has {len(weights)} values for {len(paths)} files")
    if min(weights) < 0 or sum(weights) <= 0:
        raise FastvipError("--weights must be non-negative and not all zero")
    first = load_probs(paths[0])
    ids, classes = list(first["ids"]), list(first["classes"])
    total = np.zeros(first["probs"].shape, np.float64)
    for path, w in zip(paths, weights):
        data = first if path == paths[0] else load_probs(path)
        if list(data["classes"]) != classes:
            raise FastvipError(f"{path} has other classes than {paths[0]} "
                               f"({len(data['classes'])} vs {len(classes)})")
        if list(data["ids"]) != ids:
            theirs = set(data["ids"].tolist())
            raise FastvipError(f"{path} has other ids than {paths[0]}: {len(theirs - set(ids))} extra, "
                               f"{len(set(ids) - theirs)} missing, or another order")
        total += w * data["probs"].astype(np.float64)
    probs = (total / sum(weights)).astype(np.float32)
    result = {"n": len(ids), "files": len(paths), "top1": None}
    if "labels" in first and (first["labels"] >= 0).all():
        result["top1"] = 100.0 * float((probs.argmax(1) == first["labels"]).mean())
    if out is not None:
        save_probs(out, ids, probs, classes, tta="ensemble", labels=first.get("labels"))
        result["out"] = os.fspath(out)
    if submission is not None:
        write_submission(submission, ids, probs.argmax(1))
        result["submission"] = os.fspath(submission)
    return result


def write_submission(path, ids, predictions) -> None:
    """VIPriors CSV: header ``Image IDs,Predictions``, one ``img_0.JPEG,24`` row per image."""
    if len(set(ids)) != len(ids):
        raise FastvipError("duplicate image ids; a submission needs one row per image")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUBMISSION_HEADER)
    for i, p in zip(ids, predictions):
        w.writerow((i, int(p)))
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FastvipError(f"folder {path.parent} does not exist")
    atomic.write_text(path, buf.getvalue())


def read_submission(path) -> dict[str, int]:
    """Read a VIPriors-format CSV into ``{id: class index}`` with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FastvipError(f"{path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise FastvipError(f"{path} is not a CSV text file") from None
    except (OSError, csv.Error) as e:
        raise FastvipError(f"cannot read {path}: {e}") from None
    if not rows or tuple(c.strip() for c in rows[0]) != SUBMISSION_HEADER:
        raise FastvipError(f"{path}: first line must be '{','.join(SUBMISSION_HEADER)}'")
    out: dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise FastvipError(f"{path}:{n}: expected 2 columns, got {len(row)}")
        key, value = row[0].strip(), row[1].strip()
        try:
            out_value = int(value)
        except ValueError:
            raise FastvipError(f"{path}:{n}: prediction {value!r} is not a class index") from None
        if key in out:
            raise FastvipError(f"{path}:{n}: duplicate id {key!r}")
        out[key] = out_value
    return out


def score(submission, labels) -> dict:
    """Top-1 (in %) over the ids present in both files, as the challenge scores it."""
    pred, truth = read_submission(submission), read_submission(labels)
    common = pred.keys() & truth.keys()
    if not common:
        raise FastvipError(f"{submission} and {labels} share no image ids")
    correct = sum(pred[k] == truth[k] for k in common)
    return {"top1": 100.0 * correct / len(common), "n": len(common),
            "missing": len(truth.keys() - pred.keys()), "extra": len(pred.keys() - truth.keys())}
