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

import contextlib
import errno
import os
import pickle
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fastvip import atomic
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.pack import IMAGE_EXTS

SPLITS = ("train", "val", "test")
TMP_PREFIX = ".split-tmp-"
SUMMARY_NAME = "split.json"
# the submission format of fastvip.infer.predict (not imported: that module loads torch)
LABELS_HEADER = ("Image IDs", "Predictions")
TEST_ID_START = 0  # the toolkit numbers the test images with enumerate(): img_0.JPEG, img_1.JPEG, ...
_WNID_PREFIX = re.compile(r"^(n\d{8})_")
_TEST_NAME = re.compile(r"^img_\d+\.[A-Za-z]+$")
_INT = re.compile(r"^-?\d+$")
IMAGENET, TINY = "imagenet", "tiny-imagenet"  # the source layouts, as split.json records them
TINY_ANNOTATIONS = "val_annotations.txt"
_EXPECTED = ("expected ImageNet-2012 (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG) or Tiny ImageNet "
             "(train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt)")
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
    _check_out(root, out, force)
    labels_path = _check_labels_path(out, test_labels)

    if pickles is not None:
        plan = _plan_from_pickles(root, Path(pickles), console)
    elif layout == TINY:
        plan = _plan_tiny(root, per_class, seed, console)
    else:
        plan = _plan_random(root, per_class, seed, console)
    if plan.missing:
        shown = "; ".join(plan.missing[:5])
        if not allow_missing:
            raise FastvipError(f"{len(plan.missing)} files listed in {plan.listed_in} are missing under {root} "
                               f"(first {min(5, len(plan.missing))}: {shown}); pass --allow-missing to "
                               "split without them")
        console.print(f"warning: {len(plan.missing)} listed files are missing under {root} and left out "
                      f"(first: {shown})")

    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    try:
        counts = _build(plan, tmp, copy, console)
        verified = _verify(plan, tmp, per_class if pickles is None else None)
        _swap_in(tmp, out)
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
    _print_summary(summary, console)
    return summary


def write_test_labels(path, plan: Plan) -> None:
    """The true test classes as a submission-format CSV (atomic)."""
    index = {w: i for i, w in enumerate(plan.classes)}
    lines = [",".join(LABELS_HEADER)]
    for item in sorted(plan.test, key=lambda it: _test_number(it.dst)):
        lines.append(f"{Path(item.dst).name},{index[item.wnid]}")
    atomic.write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- checks

def detect_layout(root: Path) -> str:
    """``TINY`` for a tree with ``val/val_annotations.txt`` and ``train/<wnid>/images/``, else ``IMAGENET``."""
    root = Path(root)
    if not root.is_dir():
        raise FastvipError(f"source root {root} does not exist or is not a folder")
    annotations = (root / "val" / TINY_ANNOTATIONS).is_file()
    class_images = (root / "train").is_dir() and any(
        (root / "train" / w / "images").is_dir() for w in _class_dirs(root / "train"))
    if annotations and class_images:
        return TINY
    if annotations or class_images:  # half a Tiny ImageNet tree (an unfinished unzip?) is not ImageNet either
        lacks = "train/<wnid>/images/" if annotations else f"val/{TINY_ANNOTATIONS}"
        raise FastvipError(f"{root} looks like an incomplete Tiny ImageNet tree (no {lacks}); {_EXPECTED}")
    lacks = [f"{sub}/" for sub in ("train", "val") if not (root / sub).is_dir()]
    if lacks:
        raise FastvipError(f"{root} has no {' or '.join(lacks)} folder; {_EXPECTED}")
    return IMAGENET


def _within(a: Path, b: Path) -> bool:
    """Is ``a`` the same as or inside ``b`` (after resolving links)?"""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _check_out(root: Path, out: Path, force: bool) -> None:
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


def _check_labels_path(out: Path, test_labels) -> Path | None:
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


def _remove_stale_temps(out: Path) -> None:
    for e in os.scandir(out):
        if e.name.startswith(TMP_PREFIX) and e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)


# ---------------------------------------------------------------- random subset

def _images(folder: Path) -> list[str]:
    """Image file names directly in ``folder`` (sorted; hidden files and other extensions ignored)."""
    try:
        return sorted(e.name for e in os.scandir(folder)
                      if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTS
                      and e.is_file())
    except OSError as e:
        raise FastvipError(f"cannot read {folder}: {e.strerror}") from None


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _check_per_class(per_class: int) -> None:
    if per_class < 1:
        raise FastvipError(f"--per-class must be at least 1, got {per_class}")


def _class_rng(seed: int, wnid: str) -> random.Random:
    return random.Random(f"fastvip-split:{seed}:{wnid}")


def _draw_train_val(rng: random.Random, folder: Path, wnid: str, files: list[str], per_class: int,
                    origin: str) -> tuple[list[Item], list[Item]]:
    """Disjoint train and val draws of ``per_class`` files each from ``folder`` (one class)."""
    drawn = rng.sample(files, 2 * per_class)
    def item(name: str, f: str) -> Item:
        return Item(folder / f, wnid, f"{name}/{wnid}/{f}", f"{origin}/{f}")
    return ([item("train", f) for f in sorted(drawn[:per_class])],
            [item("val", f) for f in sorted(drawn[per_class:])])


def _too_few(problems: list[str], classes: list[str], per_class: int, need: str) -> FastvipError:
    return FastvipError(f"{len(problems)} of {len(classes)} classes have too few images for {per_class} per "
                        f"class (need {need}): {', '.join(problems[:5])}{', ...' if len(problems) > 5 else ''}; "
                        "lower --per-class or fix the root")


def _plan_random(root: Path, per_class: int, seed: int, console: Console) -> Plan:
    _check_per_class(per_class)
    classes = _class_dirs(root / "train")
    if not classes:
        raise FastvipError(f"{root / 'train'} has no class folders")
    val_classes = set(_class_dirs(root / "val"))
    console.log(f"split: drawing {per_class} train + {per_class} val + {per_class} test images "
                f"per class for {len(classes)} classes (seed {seed})")
    train, val, test, problems = [], [], [], []
    for wnid in classes:
        files = _images(root / "train" / wnid)
        if wnid not in val_classes:
            problems.append(f"{wnid} (no folder in {root / 'val'})")
            continue
        val_files = _images(root / "val" / wnid)
        if len(files) < 2 * per_class or len(val_files) < per_class:
            problems.append(f"{wnid} ({len(files)} train, {len(val_files)} val)")
            continue
        rng = _class_rng(seed, wnid)
        t, v = _draw_train_val(rng, root / "train" / wnid, wnid, files, per_class, f"train/{wnid}")
        train += t
        val += v
        test += [Item(root / "val" / wnid / f, wnid, "", f"val/{wnid}/{f}")
                 for f in sorted(rng.sample(val_files, per_class))]
    if problems:
        raise _too_few(problems, classes, per_class, f"{2 * per_class} in train/<wnid>, {per_class} in val/<wnid>")
    random.Random(f"fastvip-split:{seed}:test").shuffle(test)
    for i, item in enumerate(test, start=TEST_ID_START):
        item.dst = f"test/imgs/{image_id(i)}"
    return Plan(classes, train, val, test)


# ---------------------------------------------------------------- Tiny ImageNet

def _plan_tiny(root: Path, per_class: int, seed: int, console: Console) -> Plan:
    """train/val: per-class draws from Tiny ImageNet train; test: all of its val, in annotation order."""
    _check_per_class(per_class)
    classes = _class_dirs(root / "train")
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
        files = _images(folder)
        if len(files) < 2 * per_class:
            problems.append(f"{wnid} ({len(files)} images)")
            continue
        t, v = _draw_train_val(_class_rng(seed, wnid), folder, wnid, files, per_class, f"train/{wnid}/images")
        plan.train += t
        plan.val += v
    if problems:
        raise _too_few(problems, classes, per_class, f"{2 * per_class} in train/<wnid>/images for disjoint train "
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
    ann, images = root / "val" / TINY_ANNOTATIONS, root / "val" / "images"
    if not images.is_dir():
        raise FastvipError(f"{images} does not exist (Tiny ImageNet keeps its val images there)")
    present = set(_images(images))
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
        plan.test.append(Item(images / name, wnid, f"test/imgs/{image_id(i)}", f"val/images/{name}"))
    if not seen:
        raise FastvipError(f"{ann} annotates no images")
    unlabelled = sorted(present - seen.keys())
    if unlabelled:  # test is all of val: an image without its class would be lost or unscorable
        raise FastvipError(f"{len(unlabelled)} images in {images} have no line in {ann} "
                           f"(first: {', '.join(unlabelled[:3])}); every test image needs its class")


# ---------------------------------------------------------------- pickles

# what the toolkit's lists may hold besides containers, strings and numbers (which need no
# lookup): sets, paths, and the bytes of Python 2 pickles; nothing that runs code
_PICKLE_ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("_codecs", "encode"),
                   ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any other class or function is refused before it is looked up."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, and only plain lists, dicts, "
                                     "strings and numbers are read")


def _load_pickle(path: Path):
    if not path.is_file():
        raise FastvipError(f"{path} does not exist (--pickles needs train.pickle, val.pickle, test.pickle)")
    for encoding in ("ASCII", "latin1"):  # latin1: pickles written by Python 2
        try:
            with open(path, "rb") as f:
                return _PlainUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except pickle.UnpicklingError as e:
            raise FastvipError(f"cannot read {path} as a pickle: {e}") from None
        except Exception as e:  # noqa: BLE001 - unpickling raises many kinds for a bad file
            raise FastvipError(f"cannot read {path} as a pickle: {type(e).__name__}: {e}") from None
    raise FastvipError(f"cannot read {path} as a pickle: undecodable strings")


def _text(x) -> str | None:
    if isinstance(x, bytes):
        return x.decode("utf-8", "surrogateescape")
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    if type(x).__name__ == "str_":  # numpy string scalar
        return str(x)
    return None


def _as_list(x):
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    return x


def _entries(obj, path: Path, ordered: bool) -> list[tuple[str | None, str]]:
    """Normalise a pickle's content to ``[(wnid or None, path or file name), ...]``."""
    obj = _as_list(obj)
    expected = ("an ordered list of paths or of (wnid, file) pairs" if ordered else
                "a dict {wnid: [files]}, a list of paths or a list of (wnid, file) pairs")

    def bad(what: str) -> FastvipError:
        return FastvipError(f"{path}: expected {expected}; found {what}")

    out: list[tuple[str | None, str]] = []
    if isinstance(obj, dict):
        if ordered:
            raise bad(f"a dict with {len(obj)} keys (first: {next(iter(obj), None)!r:.80}); "
                      "a dict has no order to number the test images by")
        for k, files in obj.items():
            wnid, files = _text(k), _as_list(files)
            if isinstance(files, (set, frozenset)):
                files = sorted(files, key=str)
            if wnid is None or not isinstance(files, (list, tuple)):
                raise bad(f"a dict mapping {k!r:.80} to {type(files).__name__} {files!r:.80}")
            for f in files:
                t = _text(f)
                if t is None:
                    raise bad(f"a dict whose list for {wnid!r} holds {type(f).__name__} {f!r:.80}")
                out.append((wnid, t))
    elif isinstance(obj, (list, tuple)) or (isinstance(obj, (set, frozenset)) and not ordered):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        for i, e in enumerate(seq):
            e = _as_list(e)
            t = _text(e)
            if t is not None:
                out.append((None, t))
            elif isinstance(e, (list, tuple)) and len(e) == 2 and None not in (_text(e[0]), _text(e[1])):
                out.append((_text(e[0]), _text(e[1])))
            else:
                raise bad(f"a {type(obj).__name__} whose element {i} is {type(e).__name__} {e!r:.80}")
    else:
        try:
            first = f"first element: {next(iter(obj))!r:.80}"
        except Exception:  # noqa: BLE001 - not iterable, or empty
            first = f"value: {obj!r:.80}"
        raise bad(f"{type(obj).__name__} ({first})")
    if not out:
        raise FastvipError(f"{path} holds no entries")
    return out


class _Resolver:
    """Turns pickle entries into files under ROOT/train or ROOT/val and their classes."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._index: dict[str, dict[str, list[str]]] = {}

    def index(self, split: str) -> dict[str, list[str]]:
        """File name -> class folders holding it, for bare names (built once, on demand)."""
        if split not in self._index:
            idx: dict[str, list[str]] = {}
            base = self.root / split
            for wnid in _class_dirs(base) if base.is_dir() else []:
                for f in os.listdir(base / wnid):
                    idx.setdefault(f, []).append(wnid)
            self._index[split] = idx
        return self._index[split]

    def parts(self, text: str) -> list[str]:
        text = text.strip().replace("\\", "/")
        p = PurePosixPath(text)
        if p.is_absolute():
            with contextlib.suppress(ValueError):
                p = PurePosixPath(Path(text).resolve().relative_to(self.root).as_posix())
        return [s for s in p.parts if s not in ("", ".", "/")]

    def resolve(self, wnid: str | None, text: str, default_split: str) -> tuple[str, str | None, str]:
        """-> (split, class folder or None when not found, file name)."""
        parts = self.parts(text)
        if not parts:
            raise FastvipError(f"empty path in the pickle entry {text!r}")
        split, folder, name = default_split, None, parts[-1]
        if name.startswith("ILSVRC2012_val_"):  # the ImageNet file names say where they live
            split = "val"
        elif _WNID_PREFIX.match(name):
            split = "train"
        if len(parts) >= 3 and parts[-3] in ("train", "val"):
            split, folder = parts[-3], parts[-2]
        elif len(parts) >= 2:
            folder = parts[-2]
        elif wnid is not None:
            folder = wnid
        if folder is None and split == "train":
            m = _WNID_PREFIX.match(name)
            folder = m.group(1) if m else None
        if folder is None:  # a bare name without a class prefix: look it up (default split first)
            for where_split in (split, "val" if split == "train" else "train"):
                where = self.index(where_split).get(name, [])
                if len(where) > 1:
                    raise FastvipError(f"{name} is in several class folders of {self.root / where_split} "
                                       f"({', '.join(where[:3])}); name it as <wnid>/{name} in the pickle")
                if where:
                    split, folder = where_split, where[0]
                    break
        return split, folder, name


def _plan_from_pickles(root: Path, folder: Path, console: Console) -> Plan:
    if not folder.is_dir():
        raise FastvipError(f"--pickles {folder} is not a folder")
    res = _Resolver(root)
    plan = Plan([], [], [], [])
    for name in SPLITS:
        path = folder / f"{name}.pickle"
        ordered = name == "test"
        entries = _entries(_load_pickle(path), path, ordered)
        default_split = "val" if ordered else "train"
        for i, (wnid, text) in enumerate(entries):
            split, cls, fname = res.resolve(wnid, text, default_split)
            label = cls if ordered else (wnid or cls)  # test: the true class is the val folder
            src = res.root / split / (cls or "?") / fname
            origin = f"{path.name}: {text}"
            if cls is None or not src.is_file():
                plan.missing.append(origin)
                continue
            if ordered:
                plan.test.append(Item(src, label, f"test/imgs/{image_id(i + TEST_ID_START)}", origin))
            else:
                getattr(plan, name).append(Item(src, label, f"{name}/{label}/{Path(fname).name}", origin))
        console.log(f"split: {path} lists {len(entries)} images")

    train_classes = {it.wnid for it in plan.train}
    if not train_classes:
        raise FastvipError("train.pickle names no file that exists under the root")
    for name in ("train", "val"):
        seen: dict[str, Item] = {}
        for it in getattr(plan, name):
            if it.dst in seen:
                raise FastvipError(f"{name}.pickle lists {it.dst} twice ({seen[it.dst].origin!r} and {it.origin!r})")
            seen[it.dst] = it
    overlap = {it.src for it in plan.train} & {it.src for it in plan.val}
    if overlap:
        raise FastvipError(f"{len(overlap)} images are in both train.pickle and val.pickle "
                           f"(first: {min(map(str, overlap))})")
    reused = {it.src for it in plan.test} & {it.src for it in plan.train + plan.val}
    if reused:
        raise FastvipError(f"{len(reused)} test.pickle images are also in train.pickle or val.pickle "
                           f"(first: {min(map(str, reused))})")
    for name in ("val", "test"):
        extra = sorted({it.wnid for it in getattr(plan, name)} - train_classes)
        if extra:
            raise FastvipError(f"{name}.pickle has {len(extra)} classes that train.pickle lacks "
                               f"({', '.join(extra[:5])}); class indices would not match")
    plan.classes = sorted(train_classes)
    return plan


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


def _build(plan: Plan, tmp: Path, copy: bool, console: Console) -> dict:
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


def _verify(plan: Plan, tmp: Path, per_class: int | None) -> dict:
    """Recount the built folders against the plan; the layout is renamed into place only if equal."""
    result = {}
    for name in ("train", "val"):
        expected: dict[str, int] = dict.fromkeys(plan.classes, 0)
        for it in getattr(plan, name):
            expected[it.wnid] += 1
        found = {w: len(os.listdir(tmp / name / w)) for w in _class_dirs(tmp / name)}
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


def _swap_in(tmp: Path, out: Path) -> None:
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


def _test_number(dst: str) -> int:
    return int(Path(dst).stem.split("_")[1])


def _print_summary(s: dict, console: Console) -> None:
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
