"""Tiny ImageNet (``tiny-imagenet-200``): per-class train/val draws, the ``wnids.txt`` check, all of val as test."""
from __future__ import annotations

import re
from pathlib import Path

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.split.common import (TEST_ID_START, Item, Plan, check_per_class, class_dirs, class_rng,
                                       draw_train_val, image_id, images, too_few)

_INT = re.compile(r"^-?\d+$")
TINY_ANNOTATIONS = "val_annotations.txt"


def plan_tiny(root: Path, per_class: int, seed: int, console: Console) -> Plan:
    """train/val: per-class draws from Tiny ImageNet train; test: all of its val, in annotation order."""
    check_per_class(per_class)
    classes = class_dirs(root / "train")
    _check_wnids_file(root, classes)
    plan = Plan(classes, [], [], [], listed_in=f"val/{TINY_ANNOTATIONS}")
    _tiny_test(root, set(classes), plan)
    console.log(f"split: Tiny ImageNet, drawing {per_class} train + {per_class} val images per class for "
                f"{len(classes)} classes (seed {seed}); test: all {len(plan.test) + len(plan.missing):,} val images")
    problems = []
    for wnid in classes:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            problems.append(f"{wnid} (no images/ folder)")
            continue
        files = images(folder)
        if len(files) < 2 * per_class:
            problems.append(f"{wnid} ({len(files)} images)")
            continue
        t, v = draw_train_val(class_rng(seed, wnid), folder, wnid, files, per_class, f"train/{wnid}/images")
        plan.train += t
        plan.val += v
    if problems:
        raise too_few(problems, classes, per_class, f"{2 * per_class} in train/<wnid>/images for disjoint train "
                       "and val draws; Tiny ImageNet has 500")
    return plan


def _check_wnids_file(root: Path, classes: list[str]) -> None:
    """``wnids.txt``, when there, must name exactly the train class folders (a partial unzip otherwise)."""
    path = root / "wnids.txt"
    if not path.is_file():
        return
    listed = {line.strip() for line in _read_text(path).splitlines() if line.strip()}
    only_file, only_dirs = sorted(listed - set(classes)), sorted(set(classes) - listed)
    if only_file or only_dirs:
        parts = [f"{len(only_file)} without a train/ folder (first: {', '.join(only_file[:3])})" if only_file else "",
                 f"{len(only_dirs)} train/ folders it does not list (first: {', '.join(only_dirs[:3])})"
                 if only_dirs else ""]
        raise FastvipError(f"{path} does not match {root / 'train'}: {'; '.join(p for p in parts if p)}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FastvipError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _tiny_test(root: Path, classes: set[str], plan: Plan) -> None:
    """All of ``val/images`` as test, ``img_<i>`` = the ``i``-th entry of ``val_annotations.txt``."""
    ann, image_dir = root / "val" / TINY_ANNOTATIONS, root / "val" / "images"
    if not image_dir.is_dir():
        raise FastvipError(f"{image_dir} does not exist (Tiny ImageNet keeps its val images there)")
    present = set(images(image_dir))
    seen: dict[str, int] = {}
    for n, line in enumerate(_read_text(ann).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 6 or not all(_INT.match(f) for f in fields[2:]) or "/" in fields[0] or "\\" in fields[0]:
            raise FastvipError(f"{ann} line {n}: expected FILE, WNID and 4 box integers separated by tabs, "
                               f"found {line.strip()!r:.80}")
        name, wnid = fields[:2]
        if name in seen:
            raise FastvipError(f"{ann} lines {seen[name]} and {n} both annotate {name}")
        if wnid not in classes:
            raise FastvipError(f"{ann} line {n}: {name} has class {wnid}, which has no folder in "
                               f"{root / 'train'}; class indices would not match")
        i = len(seen) + TEST_ID_START  # a left-out (missing) image keeps its number free, as with pickles
        seen[name] = n
        if name not in present:
            plan.missing.append(f"{ann.name} line {n}: val/images/{name}")
            continue
        plan.test.append(Item(image_dir / name, wnid, f"test/imgs/{image_id(i)}", f"val/images/{name}"))
    if not seen:
        raise FastvipError(f"{ann} annotates no images")
    unlabelled = sorted(present - seen.keys())
    if unlabelled:  # test is all of val: an image without its class would be lost or unscorable
        raise FastvipError(f"{len(unlabelled)} images in {image_dir} have no line in {ann} "
                           f"(first: {', '.join(unlabelled[:3])}); every test image needs its class")
