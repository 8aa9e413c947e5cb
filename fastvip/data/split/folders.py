"""Plain image folders (ImageNet-2012 ``train/<wnid>`` and ``val/<wnid>``): the seeded random per-class plan."""
from __future__ import annotations

import random
from pathlib import Path

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.split.common import (TEST_ID_START, Item, Plan, check_per_class, class_dirs, class_rng,
                                       draw_train_val, image_id, images, too_few)


def plan_random(root: Path, per_class: int, seed: int, console: Console) -> Plan:
    check_per_class(per_class)
    classes = class_dirs(root / "train")
    if not classes:
        raise FastvipError(f"{root / 'train'} has no class folders")
    val_classes = set(class_dirs(root / "val"))
    console.log(f"split: drawing {per_class} train + {per_class} val + {per_class} test images "
                f"per class for {len(classes)} classes (seed {seed})")
    train, val, test, problems = [], [], [], []
    for wnid in classes:
        files = images(root / "train" / wnid)
        if wnid not in val_classes:
            problems.append(f"{wnid} (no folder in {root / 'val'})")
            continue
        val_files = images(root / "val" / wnid)
        if len(files) < 2 * per_class or len(val_files) < per_class:
            problems.append(f"{wnid} ({len(files)} train, {len(val_files)} val)")
            continue
        rng = class_rng(seed, wnid)
        t, v = draw_train_val(rng, root / "train" / wnid, wnid, files, per_class, f"train/{wnid}")
        train += t
        val += v
        test += [Item(root / "val" / wnid / f, wnid, "", f"val/{wnid}/{f}")
                 for f in sorted(rng.sample(val_files, per_class))]
    if problems:
        raise too_few(problems, classes, per_class, f"{2 * per_class} in train/<wnid>, {per_class} in val/<wnid>")
    random.Random(f"fastvip-split:{seed}:test").shuffle(test)
    for i, item in enumerate(test, start=TEST_ID_START):
        item.dst = f"test/imgs/{image_id(i)}"
    return Plan(classes, train, val, test)
