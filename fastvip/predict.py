"""``fastvip predict`` (probabilities + VIPriors submission) and ``fastvip score``."""
from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np
import torch

from loaders import build_loader

from . import atomic
from .console import Console
from .errors import FastvipError
from .evaluate import logits_batches
from .model import (amp_dtype, build_model, find_weights, inference_weights, load_checkpoint,
                    resolve_device)
from .recipe import from_dict

SUBMISSION_HEADER = ("Image IDs", "Predictions")
TTA_CHOICES = ("none", "flip")


def predict(run_or_ckpt, data, *, weights: str = "best", tta: str = "none", out=None,
            submission=None, batch_size: int | None = None, console: Console | None = None) -> dict:
    """Class probabilities for every sample of ``data``; optionally a submission CSV."""
    console = console or Console()
    if tta not in TTA_CHOICES:
        raise FastvipError(f"--tta must be one of {', '.join(TTA_CHOICES)}")
    ckpt_path = find_weights(run_or_ckpt, weights)
    ckpt = load_checkpoint(ckpt_path)
    if "recipe" not in ckpt or "classes" not in ckpt:
        raise FastvipError(f"{ckpt_path} is not a fastvip checkpoint")
    recipe, classes = from_dict(ckpt["recipe"]), list(ckpt["classes"])
    device = resolve_device(recipe.device)
    amp = amp_dtype(recipe.amp, device)
    loader = build_loader(recipe.loader, data, train=False, batch_size=batch_size or recipe.batch_size,
                          image_size=recipe.image_size, device=device, workers=recipe.workers,
                          eval_crop=recipe.eval_crop)
    packed = loader.packed
    if packed.labelled and packed.classes != classes:
        raise FastvipError(f"{data} has {packed.num_classes} classes that differ from the "
                           f"model's {len(classes)}")

    model = build_model(recipe, len(classes)).to(device)
    state, which = inference_weights(ckpt)
    model.load_state_dict(state)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    flip = tta == "flip"
    chunks = []
    t0 = time.perf_counter()
    with console.progress("predict", packed.num_samples) as bar:
        views = _flip_views(loader) if flip else loader
        for logits, _ in logits_batches(model, views, device, amp, recipe.channels_last):
            probs = logits.softmax(dim=1)
            if flip:  # rows alternate image / mirrored image
                probs = probs.view(-1, 2, probs.shape[1]).mean(dim=1)
            chunks.append(probs.cpu())
            bar.advance(len(probs))
    seconds = time.perf_counter() - t0
    probs = torch.cat(chunks).numpy()
    if len(probs) != packed.num_samples:
        raise FastvipError(f"predicted {len(probs)} samples but {data} holds {packed.num_samples}")

    result = {"n": len(probs), "img_per_s": len(probs) / seconds, "weights": which,
              "checkpoint": os.fspath(ckpt_path), "top1": None}
    if packed.labelled:
        result["top1"] = 100.0 * float((probs.argmax(1) == packed.labels).mean())
    if out is None and Path(run_or_ckpt).is_dir():
        out = Path(run_or_ckpt) / "predictions" / f"{Path(data).stem}-{tta}.npz"
    if out is not None:
        save_probs(out, packed.ids, probs, classes, tta=tta, labels=packed.labels)
        result["out"] = os.fspath(out)
    if submission is not None:
        write_submission(submission, packed.ids, probs.argmax(1))
        result["submission"] = os.fspath(submission)
    console.log(f"predict: {len(probs)} images at {result['img_per_s']:,.0f} img/s ({which} weights, tta {tta})")
    return result


def _flip_views(loader):
    """Interleave each image with its mirror image: one forward pass covers both views."""
    for images, labels in loader:
        both = torch.stack([images, images.flip(3)], dim=1).flatten(0, 1)
        yield both, labels.repeat_interleave(2)


def save_probs(path, ids, probs, classes, *, tta: str, labels=None) -> None:
    """``.npz`` with ids, float16 probabilities, class names and the TTA used (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    arrays = {"ids": np.asarray(ids, dtype=str), "probs": probs.astype(np.float16),
              "classes": np.asarray(classes, dtype=str), "tta": np.asarray(tta)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    np.savez(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())


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
