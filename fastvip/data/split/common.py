"""What the sources of ``fastvip split`` and the command share: the plan, the per-class draws, the output.

Checking, building, verifying and swapping in the output folders, the test labels, the summary.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fastvip import atomic
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.listing import IMAGE_EXTS

SPLITS = ("train", "val", "test")
TMP_PREFIX = ".split-tmp-"
SUMMARY_NAME = "split.json"
# the submission format of fastvip.infer.predict (not imported: that module loads torch)
LABELS_HEADER = ("Image IDs", "Predictions")
TEST_ID_START = 0  # the toolkit numbers the test images with enumerate(): img_0.JPEG, img_1.JPEG, ...
_TEST_NAME = re.compile(r"^img_\d+\.[A-Za-z]+$")
IMAGENET, TINY = "imagenet", "tiny-imagenet"  # the source layouts, as split.json records them
# os.link failures that mean "this filesystem / these files cannot be hard-linked": copy instead
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP}


def image_id(i: int) -> str:
    """The id of test image ``i``: its file name, as ``fastvip pack`` stores it."""
    return f"img_{i}.JPEG"


@dataclass
class Item:
    """One output file: where it comes from, its class, and where it goes (relative to OUT)."""
    src: Path
    wnid: str | None
    dst: str
    origin: str  # how the user named it (for messages)


@dataclass
class Plan:
    classes: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    missing: list[str] = field(default_factory=list)
    listed_in: str = "the pickles"  # what named the missing files (for messages)


# ---------------------------------------------------------------- output checks

def _within(a: Path, b: Path) -> bool:
    """Is ``a`` the same as or inside ``b`` (after resolving links)?"""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_out(root: Path, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FastvipError(f"output {out} exists and is not a folder")
    if _within(out, root) or _within(root, out):
        raise FastvipError(f"output {out} and source root {root} must not contain each other")
    if not out.exists():
        return
    entries = sorted(e.name for e in os.scandir(out) if not e.name.startswith(TMP_PREFIX))
    if not entries:
        return
    if not force:
        raise FastvipError(f"output {out} is not empty (holds {', '.join(entries[:5])}"
                           f"{', ...' if len(entries) > 5 else ''}); use --force to replace a previous split")
    for name in SPLITS:
        p = out / name
        if (p.exists() or p.is_symlink()) and not _looks_like_split(p, name):
            raise FastvipError(f"--force: {p} does not look like a split made before "
                               f"(expected {'imgs/img_<i>.*' if name == 'test' else '<wnid>/<files>'} only); "
                               "remove it yourself")


def _looks_like_split(p: Path, name: str) -> bool:
    """``train``/``val``: class folders holding only files; ``test``: only ``imgs/img_<i>.*``."""
    if p.is_symlink() or not p.is_dir():
        return False
    try:
        if name == "test":
            top = list(os.scandir(p))
            if [e.name for e in top] not in ([], ["imgs"]):
                return False
            if not top:
                return True
            imgs = p / "imgs"
            return not imgs.is_symlink() and all(
                e.is_file(follow_symlinks=False) and _TEST_NAME.match(e.name) for e in os.scandir(imgs))
        for e in os.scandir(p):
            if e.name == ".DS_Store":
                continue
            if not e.is_dir(follow_symlinks=False):
                return False
            if not all(f.is_file(follow_symlinks=False) for f in os.scandir(e.path)):
                return False
        return True
    except OSError:
        return False


def check_labels_path(out: Path, test_labels) -> Path | None:
    if test_labels is None:
        return None
    path = Path(test_labels)
    for name in SPLITS:
        if _within(path.parent, out / name):
            raise FastvipError(f"--test-labels {path} is inside {out / name}; the labels must not sit "
                               "beside the images (write them outside the split folders)")
    if not path.parent.is_dir():
        raise FastvipError(f"--test-labels: folder {path.parent} does not exist")
    if path.is_dir():
        raise FastvipError(f"--test-labels {path} is a folder")
    return path


def remove_stale_temps(out: Path) -> None:
    for e in os.scandir(out):
        if e.name.startswith(TMP_PREFIX) and e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)


# ---------------------------------------------------------------- per-class draws

def images(folder: Path) -> list[str]:
    """Image file names directly in ``folder`` (sorted; hidden files and other extensions ignored)."""
    try:
        return sorted(e.name for e in os.scandir(folder)
                      if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTS
                      and e.is_file())
    except OSError as e:
        raise FastvipError(f"cannot read {folder}: {e.strerror}") from None


def class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def check_per_class(per_class: int) -> None:
    if per_class < 1:
        raise FastvipError(f"--per-class must be at least 1, got {per_class}")


def class_rng(seed: int, wnid: str) -> random.Random:
    return random.Random(f"fastvip-split:{seed}:{wnid}")


def draw_train_val(rng: random.Random, folder: Path, wnid: str, files: list[str], per_class: int,
                   origin: str) -> tuple[list[Item], list[Item]]:
    """Disjoint train and val draws of ``per_class`` files each from ``folder`` (one class)."""
    drawn = rng.sample(files, 2 * per_class)
    def item(name: str, f: str) -> Item:
        return Item(folder / f, wnid, f"{name}/{wnid}/{f}", f"{origin}/{f}")
    return ([item("train", f) for f in sorted(drawn[:per_class])],
            [item("val", f) for f in sorted(drawn[per_class:])])


def too_few(problems: list[str], classes: list[str], per_class: int, need: str) -> FastvipError:
    return FastvipError(f"{len(problems)} of {len(classes)} classes have too few images for {per_class} per "
                        f"class (need {need}): {', '.join(problems[:5])}{', ...' if len(problems) > 5 else ''}; "
                        "lower --per-class or fix the root")


# ---------------------------------------------------------------- build, verify, swap

def _place(src: Path, dst: Path, copy: bool, state: dict) -> None:
    if not copy and state["try_link"]:
        try:
            os.link(src, dst)
            state["linked"] += 1
            return
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise FastvipError(f"cannot link {src} to {dst}: {e.strerror}") from None
            if e.errno == errno.EXDEV:  # another filesystem: every later link fails too
                state["try_link"] = False
    try:
        shutil.copy2(src, dst)
    except OSError as e:
        raise FastvipError(f"cannot copy {src} to {dst}: {e.strerror}") from None
    state["copied"] += 1


def build(plan: Plan, tmp: Path, copy: bool, console: Console) -> dict:
    for name in ("train", "val"):
        for wnid in plan.classes:  # every class in both, even an empty one: same class indices
            (tmp / name / wnid).mkdir(parents=True, exist_ok=True)
    (tmp / "test" / "imgs").mkdir(parents=True)
    with_val = {it.wnid for it in plan.val}
    empty = [w for w in plan.classes if w not in with_val]
    if empty:
        console.print(f"warning: {len(empty)} classes have no val images (first: {', '.join(empty[:5])}); "
                      "their val folders are empty")
    state = {"linked": 0, "copied": 0, "try_link": True}
    items = plan.train + plan.val + plan.test
    with console.progress("split", len(items), unit="file") as bar:
        for it in items:
            _place(it.src, tmp / it.dst, copy, state)
            bar.advance()
    return state


def verify(plan: Plan, tmp: Path, per_class: int | None) -> dict:
    """Recount the built folders against the plan; the layout is renamed into place only if equal."""
    result = {}
    for name in ("train", "val"):
        expected: dict[str, int] = dict.fromkeys(plan.classes, 0)
        for it in getattr(plan, name):
            expected[it.wnid] += 1
        found = {w: len(os.listdir(tmp / name / w)) for w in class_dirs(tmp / name)}
        if found != expected:
            bad = sorted(w for w in expected.keys() | found.keys() if expected.get(w) != found.get(w))
            raise FastvipError(f"verification failed: {name} counts differ from the plan for "
                               f"{len(bad)} classes (first: {bad[0]})")
        if per_class is not None and set(found.values()) != {per_class}:
            raise FastvipError(f"verification failed: {name} does not hold {per_class} images in every class")
        result[name] = {"classes": sum(1 for n in found.values() if n), "images": sum(found.values())}
    names = set(os.listdir(tmp / "test" / "imgs"))
    if names != {Path(it.dst).name for it in plan.test}:
        raise FastvipError("verification failed: test images differ from the plan")
    result["test"] = {"classes": len({it.wnid for it in plan.test}), "images": len(names)}
    return result


def swap_in(tmp: Path, out: Path) -> None:
    """Move a previous split aside, rename the new folders in, then delete the old ones."""
    old = tmp / ".old"
    old.mkdir()
    for name in SPLITS:
        if (out / name).exists() or (out / name).is_symlink():
            os.rename(out / name, old / name)
    for name in SPLITS:
        os.rename(tmp / name, out / name)
    atomic.fsync_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- test labels, summary

def write_test_labels(path, plan: Plan) -> None:
    """The true test classes as a submission-format CSV (atomic)."""
    index = {w: i for i, w in enumerate(plan.classes)}
    lines = [",".join(LABELS_HEADER)]
    for item in sorted(plan.test, key=lambda it: _test_number(it.dst)):
        lines.append(f"{Path(item.dst).name},{index[item.wnid]}")
    atomic.write_text(path, "\n".join(lines) + "\n")


def _test_number(dst: str) -> int:
    return int(Path(dst).stem.split("_")[1])


def print_summary(s: dict, console: Console) -> None:
    mode = s["mode"] if s["mode"] == "pickles" else f"random, {s['per_class']} per class, seed {s['seed']}"
    if s["layout"] == TINY:
        mode += "; test: all of val, in val_annotations.txt order"
    rows = [("output", s["out"]),
            ("source", "Tiny ImageNet" if s["layout"] == TINY else "ImageNet-2012"),
            ("mode", mode),
            ("classes", str(s["classes"]))]
    rows += [(name, f"{s[name]['images']:,} images, {s[name]['classes']} classes") for name in SPLITS]
    rows += [("files", f"{s['linked']:,} hard-linked, {s['copied']:,} copied"),
             ("missing", str(s["missing"])),
             ("test labels", s["test_labels"] or "not written (use --test-labels FILE)"),
             ("time", f"{s['seconds']:.1f} s")]
    console.table("split summary", rows)
