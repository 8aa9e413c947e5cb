"""The VIPriors toolkit's ``train/val/test.pickle``: a restricted unpickler, their entries, and the plan they name."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path, PurePosixPath

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.split.common import SPLITS, TEST_ID_START, Item, Plan, class_dirs, image_id

_WNID_PREFIX = re.compile(r"^(n\d{8})_")

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
            for wnid in class_dirs(base) if base.is_dir() else []:
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


def plan_from_pickles(root: Path, folder: Path, console: Console) -> Plan:
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
