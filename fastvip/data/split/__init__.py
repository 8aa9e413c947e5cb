"""``fastvip split``: the VIPriors image-classification layout from ImageNet-2012 or Tiny ImageNet.

Output, the layout of the challenge toolkit's ``generate_images.py``::

    OUT/train/<wnid>/<file>     OUT/val/<wnid>/<file>     OUT/test/imgs/img_<i>.JPEG

The source layout is read from the tree (``detect_layout``):

* Tiny ImageNet (``tiny-imagenet-200``; it has ``val/val_annotations.txt`` and
  ``train/<wnid>/images/``): the tiny-vipriors proxy. Per class (sorted wnids),
  disjoint ``per_class`` draws for train and val from ``train/<wnid>/images``; test
  is *all* of ``val/images``, numbered in the line order of ``val_annotations.txt``
  (``img_<i>`` is the image on its ``i``-th entry, counting from 0; in the archive as
  distributed that is ``val_<i>.JPEG``), its classes taken from that file. ``test/``
  (unlabelled) and the box files are not read. The toolkit's pickles index
  ImageNet-2012 files, so ``pickles`` is refused here.
* ImageNet-2012: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (val
  already in class folders), with two ways to choose the images:

  * ``pickles``: the toolkit's ``train.pickle``, ``val.pickle`` and ``test.pickle``.
    The toolkit stores train/val as lists of ``(wnid, file name)`` pairs inside
    ImageNet *train*, and test as an ordered list of paths inside ImageNet *val*
    (``<wnid>/ILSVRC2012_val_*.JPEG``, or bare names for a flat val folder); the
    test image at list position ``i`` becomes ``img_<i>.JPEG``, counting from 0 as
    the toolkit does. Also accepted: ``{wnid: [file, ...]}`` dicts and lists of
    relative paths (``train/<wnid>/<file>``, ``<wnid>/<file>`` or a bare file name;
    a bare train name carries its class in its ``<wnid>_`` prefix, a bare val name is
    looked up in ``ROOT/val``). A name that says where it lives wins over the default
    folder: ``ILSVRC2012_val_*`` is in ImageNet val, ``<wnid>_*`` in ImageNet train.
  * random (no pickles): per class (sorted wnids) disjoint ``per_class`` draws for
    train and val from ``ROOT/train/<wnid>`` and ``per_class`` test images from
    ``ROOT/val/<wnid>``; the test images of all classes are shuffled together and
    numbered from 0.

Every random draw is seeded by ``(seed, wnid)``, so a class's draw does not depend on
which other classes exist.

Files are hard links to the originals when possible (no extra disk; editing an
output file in place would edit the original — fastvip only reads them),
otherwise copies. Test labels are never written beside the test images: only to
``test_labels``, a CSV in the submission format (``Image IDs,Predictions``, rows
``img_<i>.JPEG,<class index>`` in sorted-wnid order), which is exactly what
``fastvip score SUB.csv LABELS.csv`` expects and what ``fastvip pack`` calls the
images (the id is the file name).

The layout is built in ``OUT/.split-tmp-*`` and the three folders are renamed into
place only after their counts were verified, so an interrupted split never leaves a
layout that looks complete.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from fastvip import atomic
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.split.common import (IMAGENET, LABELS_HEADER, SPLITS, SUMMARY_NAME, TEST_ID_START, TINY,
                                       TMP_PREFIX, Item, Plan, build, check_labels_path, check_out, class_dirs,
                                       image_id, print_summary, remove_stale_temps, swap_in, verify,
                                       write_test_labels)
from fastvip.data.split.folders import plan_random
from fastvip.data.split.tiny_imagenet import TINY_ANNOTATIONS, plan_tiny
from fastvip.data.split.vipriors import plan_from_pickles

__all__ = ["split", "detect_layout", "write_test_labels", "image_id", "Item", "Plan", "SPLITS", "TMP_PREFIX",
           "SUMMARY_NAME", "LABELS_HEADER", "TEST_ID_START", "IMAGENET", "TINY", "TINY_ANNOTATIONS"]

_EXPECTED = ("expected ImageNet-2012 (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG) or Tiny ImageNet "
             "(train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt)")


# ---------------------------------------------------------------- public entry point

def split(root, out, *, pickles=None, per_class: int = 50, seed: int = 0, test_labels=None,
          copy: bool = False, force: bool = False, allow_missing: bool = False,
          console: Console | None = None) -> dict:
    """Build ``OUT/{train,val,test}`` from an ImageNet-2012 or Tiny ImageNet ``root``; return a summary.

    ``pickles`` (ImageNet-2012 only): folder with the toolkit's ``train/val/test.pickle``
    (else a seeded random subset of ``per_class`` images per class). ``test_labels``: CSV to
    write the true test classes to (never beside the images). ``copy``: copy instead of
    hard-linking. ``force``: replace the train/val/test folders of a previous split in
    ``out``. ``allow_missing``: split without files a pickle or ``val_annotations.txt``
    lists but ``root`` lacks (default: an error).
    """
    console = console or Console()
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    layout = detect_layout(root)
    if pickles is not None and layout == TINY:
        raise FastvipError(f"--pickles does not apply to the Tiny ImageNet tree {root}: the toolkit's pickles "
                           "index ImageNet-2012 files; drop it (train/val are drawn with --per-class and "
                           "--seed, test is all of Tiny ImageNet val)")
    check_out(root, out, force)
    labels_path = check_labels_path(out, test_labels)

    if pickles is not None:
        plan = plan_from_pickles(root, Path(pickles), console)
    elif layout == TINY:
        plan = plan_tiny(root, per_class, seed, console)
    else:
        plan = plan_random(root, per_class, seed, console)
    if plan.missing:
        shown = "; ".join(plan.missing[:5])
        if not allow_missing:
            raise FastvipError(f"{len(plan.missing)} files listed in {plan.listed_in} are missing under {root} "
                               f"(first {min(5, len(plan.missing))}: {shown}); pass --allow-missing to "
                               "split without them")
        console.print(f"warning: {len(plan.missing)} listed files are missing under {root} and left out "
                      f"(first: {shown})")

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    try:
        counts = build(plan, tmp, copy, console)
        verified = verify(plan, tmp, per_class if pickles is None else None)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    summary = {
        "root": os.fspath(root), "out": os.fspath(out), "layout": layout,
        "mode": "pickles" if pickles is not None else "random",
        "pickles": os.fspath(pickles) if pickles is not None else None,
        "per_class": per_class if pickles is None else None, "seed": seed if pickles is None else None,
        "classes": len(plan.classes), **verified,
        "linked": counts["linked"], "copied": counts["copied"],
        "missing": len(plan.missing), "missing_files": plan.missing[:20],
        "test_id_start": TEST_ID_START,
        # how img_<i> numbers were given: test.pickle position, val_annotations.txt line order, or seeded shuffle
        "test_order": "pickle" if pickles is not None else "val_annotations" if layout == TINY else "shuffled",
        "test_labels": None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if labels_path is not None:
        write_test_labels(labels_path, plan)
        summary["test_labels"] = os.fspath(labels_path)
    atomic.write_json(out / SUMMARY_NAME, summary)
    print_summary(summary, console)
    return summary


# ---------------------------------------------------------------- source layout

def detect_layout(root: Path) -> str:
    """``TINY`` for a tree with ``val/val_annotations.txt`` and ``train/<wnid>/images/``, else ``IMAGENET``."""
    root = Path(root)
    if not root.is_dir():
        raise FastvipError(f"source root {root} does not exist or is not a folder")
    annotations = (root / "val" / TINY_ANNOTATIONS).is_file()
    class_images = (root / "train").is_dir() and any(
        (root / "train" / w / "images").is_dir() for w in class_dirs(root / "train"))
    if annotations and class_images:
        return TINY
    if annotations or class_images:  # half a Tiny ImageNet tree (an unfinished unzip?) is not ImageNet either
        lacks = "train/<wnid>/images/" if annotations else f"val/{TINY_ANNOTATIONS}"
        raise FastvipError(f"{root} looks like an incomplete Tiny ImageNet tree (no {lacks}); {_EXPECTED}")
    lacks = [f"{sub}/" for sub in ("train", "val") if not (root / sub).is_dir()]
    if lacks:
        raise FastvipError(f"{root} has no {' or '.join(lacks)} folder; {_EXPECTED}")
    return IMAGENET
