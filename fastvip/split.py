"""``fastvip split``: the VIPriors image-classification layout from an ImageNet-2012 root.

Input ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (val already in
class folders). Output, the layout of the challenge toolkit's ``generate_images.py``::

    OUT/train/<wnid>/<file>     OUT/val/<wnid>/<file>     OUT/test/imgs/img_<i>.JPEG

Two ways to choose the images:

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
  numbered from 0. Every draw is seeded by ``(seed, wnid)``, so a class's draw does
  not depend on which other classes exist.

Files are hard links to the originals when possible (no extra disk; editing an
output file in place would edit the ImageNet original — fastvip only reads them),
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

from . import atomic
from .console import Console
from .errors import FastvipError
from .pack import IMAGE_EXTS

SPLITS = ("train", "val", "test")
TMP_PREFIX = ".split-tmp-"
SUMMARY_NAME = "split.json"
# the submission format of fastvip.predict (not imported: that module loads torch)
LABELS_HEADER = ("Image IDs", "Predictions")
TEST_ID_START = 0  # the toolkit numbers the test images with enumerate(): img_0.JPEG, img_1.JPEG, ...
_WNID_PREFIX = re.compile(r"^(n\d{8})_")
_TEST_NAME = re.compile(r"^img_\d+\.[A-Za-z]+$")
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


# ---------------------------------------------------------------- public entry point

def split(root, out, *, pickles=None, per_class: int = 50, seed: int = 0, test_labels=None,
          copy: bool = False, force: bool = False, allow_missing: bool = False,
          console: Console | None = None) -> dict:
    """Build ``OUT/{train,val,test}`` from the ImageNet root ``root``; return a summary dict.

    ``pickles``: folder with the toolkit's ``train/val/test.pickle`` (else a seeded random
    subset of ``per_class`` images per class). ``test_labels``: CSV to write the true test
    classes to (never beside the images). ``copy``: copy instead of hard-linking. ``force``:
    replace the train/val/test folders of a previous split in ``out``. ``allow_missing``:
    split without files a pickle lists but ``root`` lacks (default: an error).
    """
    console = console or Console()
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    _check_root(root, need_val=True)
    _check_out(root, out, force)
    labels_path = _check_labels_path(out, test_labels)

    if pickles is not None:
        plan = _plan_from_pickles(root, Path(pickles), console)
    else:
        plan = _plan_random(root, per_class, seed, console)
    if plan.missing:
        shown = "; ".join(plan.missing[:5])
        if not allow_missing:
            raise FastvipError(f"{len(plan.missing)} files listed in the pickles are missing under {root} "
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
        "root": os.fspath(root), "out": os.fspath(out), "mode": "pickles" if pickles is not None else "random",
        "pickles": os.fspath(pickles) if pickles is not None else None,
        "per_class": per_class if pickles is None else None, "seed": seed if pickles is None else None,
        "classes": len(plan.classes), **verified,
        "linked": counts["linked"], "copied": counts["copied"],
        "missing": len(plan.missing), "missing_files": plan.missing[:20],
        "test_id_start": TEST_ID_START, "test_labels": None,
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

def _check_root(root: Path, need_val: bool) -> None:
    if not root.is_dir():
        raise FastvipError(f"ImageNet root {root} does not exist or is not a folder")
    for sub in ("train", "val") if need_val else ("train",):
        if not (root / sub).is_dir():
            raise FastvipError(f"ImageNet root {root} has no {sub}/ folder (expected {sub}/<wnid>/*.JPEG)")


def _within(a: Path, b: Path) -> bool:
    """Is ``a`` the same as or inside ``b`` (after resolving links)?"""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _check_out(root: Path, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FastvipError(f"output {out} exists and is not a folder")
    if _within(out, root) or _within(root, out):
        raise FastvipError(f"output {out} and ImageNet root {root} must not contain each other")
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


def _plan_random(root: Path, per_class: int, seed: int, console: Console) -> Plan:
    if per_class < 1:
        raise FastvipError(f"--per-class must be at least 1, got {per_class}")
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
        rng = random.Random(f"fastvip-split:{seed}:{wnid}")
        drawn = rng.sample(files, 2 * per_class)
        train += [Item(root / "train" / wnid / f, wnid, f"train/{wnid}/{f}", f"train/{wnid}/{f}")
                  for f in sorted(drawn[:per_class])]
        val += [Item(root / "train" / wnid / f, wnid, f"val/{wnid}/{f}", f"train/{wnid}/{f}")
                for f in sorted(drawn[per_class:])]
        test += [Item(root / "val" / wnid / f, wnid, "", f"val/{wnid}/{f}")
                 for f in sorted(rng.sample(val_files, per_class))]
    if problems:
        raise FastvipError(f"{len(problems)} of {len(classes)} classes have too few images for "
                           f"{per_class} per class (need {2 * per_class} in train/<wnid>, {per_class} in "
                           f"val/<wnid>): {', '.join(problems[:5])}{', ...' if len(problems) > 5 else ''}; "
                           "lower --per-class or fix the root")
    random.Random(f"fastvip-split:{seed}:test").shuffle(test)
    for i, item in enumerate(test, start=TEST_ID_START):
        item.dst = f"test/imgs/{image_id(i)}"
    return Plan(classes, train, val, test)


# ---------------------------------------------------------------- pickles

def _load_pickle(path: Path):
    if not path.is_file():
        raise FastvipError(f"{path} does not exist (--pickles needs train.pickle, val.pickle, test.pickle)")
    for encoding in ("ASCII", "latin1"):  # latin1: pickles written by Python 2
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding=encoding)
        except UnicodeDecodeError:
            continue
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
    rows = [("output", s["out"]),
            ("mode", s["mode"] if s["mode"] == "pickles" else f"random, {s['per_class']} per class, seed {s['seed']}"),
            ("classes", str(s["classes"]))]
    rows += [(name, f"{s[name]['images']:,} images, {s[name]['classes']} classes") for name in SPLITS]
    rows += [("files", f"{s['linked']:,} hard-linked, {s['copied']:,} copied"),
             ("missing", str(s["missing"])),
             ("test labels", s["test_labels"] or "not written (use --test-labels FILE)"),
             ("time", f"{s['seconds']:.1f} s")]
    console.table("split summary", rows)
