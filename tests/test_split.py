"""``fastvip split``: fake ImageNet and Tiny ImageNet roots made at test time, both selection modes, output safety."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image

from fastvip.data import split as split_mod
from fastvip.data.split import common as split_common
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.split import split

Q = Console(quiet=True)
WNIDS = [f"n0000000{k}" for k in range(6)]
TRAIN_PER_CLASS, VAL_PER_CLASS = 12, 4


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """``root/train/<wnid>/<wnid>_<j>.JPEG`` (12 per class), ``root/val/<wnid>/ILSVRC2012_val_*.JPEG`` (4)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    v = 0
    for wnid in WNIDS:
        for j in range(TRAIN_PER_CLASS):
            write_image(root / "train" / wnid / f"{wnid}_{j}.JPEG", rng.integers(0, 255, (8, 8, 3)))
        for _ in range(VAL_PER_CLASS):
            v += 1
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{v:08d}.JPEG", rng.integers(0, 255, (8, 8, 3)))
    return root


def inode(p: Path) -> int:
    return os.stat(p).st_ino


def source_index(root: Path) -> dict[int, tuple[str, str]]:
    """inode -> (ImageNet split, wnid) of every source image."""
    return {inode(p): (p.parts[-3], p.parts[-2]) for p in root.glob("*/*/*.JPEG")}


def listing(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): inode(p) for p in sorted(out.glob("*/*/*")) if p.is_file()}


def test_random_split_counts_disjoint_and_seeded(imagenet, tmp_path):
    s = split(imagenet, tmp_path / "a", per_class=4, seed=0, console=Q)
    out = tmp_path / "a"
    assert sorted(os.listdir(out)) == ["split.json", "test", "train", "val"]
    for name in ("train", "val"):
        assert sorted(os.listdir(out / name)) == WNIDS
        assert all(len(os.listdir(out / name / w)) == 4 for w in WNIDS)
        assert s[name] == {"classes": 6, "images": 24}
    assert s["test"] == {"classes": 6, "images": 24} and s["missing"] == 0
    assert s["layout"] == "imagenet" and s["test_order"] == "shuffled"
    src = source_index(imagenet)
    train = {inode(p) for p in out.glob("train/*/*")}
    val = {inode(p) for p in out.glob("val/*/*")}
    assert not train & val
    assert all(src[i][0] == "train" for i in train | val)
    # train and val files keep their class; test images come from ImageNet val
    assert all(src[inode(p)][1] == p.parent.name for name in ("train", "val") for p in out.glob(f"{name}/*/*"))
    assert all(src[inode(p)][0] == "val" for p in out.glob("test/imgs/*"))

    split(imagenet, tmp_path / "b", per_class=4, seed=0, console=Q)
    split(imagenet, tmp_path / "c", per_class=4, seed=1, console=Q)
    assert listing(out) == listing(tmp_path / "b")  # same names and same sources
    assert listing(out) != listing(tmp_path / "c")
    assert not list(out.glob(".split-tmp-*"))


def test_test_ids_and_labels_file_match_the_true_classes(imagenet, tmp_path):
    labels = tmp_path / "labels.csv"
    s = split(imagenet, tmp_path / "out", per_class=4, seed=3, test_labels=labels, console=Q)
    imgs = tmp_path / "out" / "test" / "imgs"
    assert sorted(os.listdir(imgs)) == sorted(f"img_{i}.JPEG" for i in range(24))
    assert s["test_labels"] == os.fspath(labels) and s["test_id_start"] == 0
    lines = labels.read_text().splitlines()
    assert lines[0] == "Image IDs,Predictions" and lines[1].startswith("img_0.JPEG,")
    src = source_index(imagenet)
    for line in lines[1:]:
        image, label = line.split(",")
        assert WNIDS[int(label)] == src[inode(imgs / image)][1]
    # the shuffle mixes the classes; nothing but images sits beside them
    assert len({line.split(",")[1] for line in lines[1:5]}) > 1
    assert not list((tmp_path / "out" / "test").rglob("*.csv"))


def test_labels_file_is_what_fastvip_score_reads(imagenet, tmp_path):
    from fastvip.infer.predict import (
        SUBMISSION_HEADER,
        read_submission,
        score,
        write_submission,
    )
    assert split_mod.LABELS_HEADER == SUBMISSION_HEADER
    labels = tmp_path / "labels.csv"
    split(imagenet, tmp_path / "out", per_class=4, seed=0, test_labels=labels, console=Q)
    truth = read_submission(labels)
    ids = [f"img_{i}.JPEG" for i in range(24)]
    assert sorted(truth) == sorted(ids)
    preds = [truth[i] if k % 4 else (truth[i] + 1) % 6 for k, i in enumerate(ids)]  # 6 of 24 wrong
    sub = tmp_path / "sub.csv"
    write_submission(sub, ids, preds)
    r = score(sub, labels)
    assert r["n"] == 24 and r["missing"] == 0 and r["top1"] == pytest.approx(75.0)


def test_hard_links_by_default_and_copies_with_copy(imagenet, tmp_path):
    s = split(imagenet, tmp_path / "l", per_class=2, seed=0, console=Q)
    assert s["linked"] == 6 * 2 * 3 and s["copied"] == 0
    src = source_index(imagenet)
    linked = list((tmp_path / "l").glob("*/*/*.JPEG"))
    assert linked and all(inode(p) in src for p in linked)

    s = split(imagenet, tmp_path / "c", per_class=2, seed=0, copy=True, console=Q)
    assert s["linked"] == 0 and s["copied"] == 36
    copies = sorted((tmp_path / "c").glob("*/*/*.JPEG"))
    assert not any(inode(p) in src for p in copies)
    assert [p.read_bytes() for p in copies] == [p.read_bytes() for p in sorted(linked)]


def test_link_falls_back_to_copy_across_devices(imagenet, tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(split_common.os, "link", no_link)
    s = split(imagenet, tmp_path / "o", per_class=1, seed=0, console=Q)
    assert s["linked"] == 0 and s["copied"] == 18


def _write_pickles(folder: Path, train, val, test) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in (("train", train), ("val", val), ("test", test)):
        with open(folder / f"{name}.pickle", "wb") as f:
            pickle.dump(obj, f)
    return folder


def _check_test_order(out: Path, root: Path, expected: list[Path]) -> None:
    for i, p in enumerate(expected):
        assert inode(out / "test" / "imgs" / f"img_{i}.JPEG") == inode(p)


def test_pickles_dict_and_path_list_formats(imagenet, tmp_path):
    v = lambda w: sorted((imagenet / "val" / w).iterdir())
    train = {w: [f"{w}_{j}.JPEG" for j in range(3)] for w in WNIDS}
    val = [f"train/{WNIDS[0]}/{WNIDS[0]}_5.JPEG", f"{WNIDS[1]}/{WNIDS[1]}_6.JPEG", f"{WNIDS[2]}_7.JPEG"]
    test_files = [v(WNIDS[4])[1], v(WNIDS[0])[0], v(WNIDS[5])[3]]
    test = [f"{test_files[0].parent.name}/{test_files[0].name}",  # <wnid>/<file>
            test_files[1].name,                                       # bare: looked up in val
            f"val/{test_files[2].parent.name}/{test_files[2].name}"]  # val/<wnid>/<file>
    pk = _write_pickles(tmp_path / "pk", train, val, test)
    labels = tmp_path / "labels.csv"
    s = split(imagenet, tmp_path / "out", pickles=pk, test_labels=labels, console=Q)
    out = tmp_path / "out"
    assert s["mode"] == "pickles" and s["train"] == {"classes": 6, "images": 18}
    assert s["val"] == {"classes": 3, "images": 3} and s["test"]["images"] == 3
    assert (out / "train" / WNIDS[3] / f"{WNIDS[3]}_2.JPEG").samefile(imagenet / "train" / WNIDS[3] / f"{WNIDS[3]}_2.JPEG")
    assert (out / "val" / WNIDS[2] / f"{WNIDS[2]}_7.JPEG").is_file()
    assert sorted(os.listdir(out / "val")) == WNIDS  # empty class folders keep the class indices aligned
    _check_test_order(out, imagenet, test_files)
    assert labels.read_text().splitlines()[1:] == ["img_0.JPEG,4", "img_1.JPEG,0", "img_2.JPEG,5"]


def test_pickles_official_pair_format(imagenet, tmp_path):
    """The toolkit's generate_images.py: [(wnid, file), ...] in ImageNet train; test paths into val."""
    train = [(w, f"{w}_{j}.JPEG") for w in WNIDS for j in range(2)]
    val = [(w, f"{w}_{j}.JPEG") for w in WNIDS for j in (10, 11)]
    test_files = [sorted((imagenet / "val" / w).iterdir())[k] for k, w in ((2, WNIDS[3]), (0, WNIDS[1]))]
    pk = _write_pickles(tmp_path / "pk", train, val, [f"{p.parent.name}/{p.name}" for p in test_files])
    s = split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    assert s["train"]["images"] == 12 and s["val"] == {"classes": 6, "images": 12}
    _check_test_order(tmp_path / "out", imagenet, test_files)


def test_bad_pickle_format_is_a_one_line_error(imagenet, tmp_path):
    pk = _write_pickles(tmp_path / "pk", {"a": 1}, [], [])
    with pytest.raises(FastvipError, match=r"train\.pickle: expected .*found a dict mapping 'a' to int") as e:
        split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    assert "\n" not in str(e.value)
    pk = _write_pickles(tmp_path / "pk2", [f"{WNIDS[0]}_0.JPEG"], [f"{WNIDS[0]}_1.JPEG"], {WNIDS[0]: []})
    with pytest.raises(FastvipError, match=r"test\.pickle: expected an ordered list.*found a dict"):
        split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    pk = _write_pickles(tmp_path / "pk3", [f"{WNIDS[0]}_0.JPEG"], [3.5], [])
    with pytest.raises(FastvipError, match=r"val\.pickle: .*element 0 is float 3\.5"):
        split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    assert not (tmp_path / "out").exists()
    # a pickle that would create a file when unpickled is refused before anything runs
    made = tmp_path / "made"
    pk = _write_pickles(tmp_path / "pk4", [_Planted(made)], [], [])
    with pytest.raises(FastvipError, match=r"train\.pickle as a pickle: it refers to io\.open, and only plain"):
        split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    assert not made.exists() and not (tmp_path / "out").exists()


class _Planted:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_missing_listed_files_are_an_error_unless_allowed(imagenet, tmp_path):
    train = [f"{w}_{j}.JPEG" for w in WNIDS for j in range(2)] + [f"{WNIDS[0]}_99.JPEG", f"{WNIDS[1]}_98.JPEG"]
    val = [f"{w}_5.JPEG" for w in WNIDS]
    test = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_99999999.JPEG", "ILSVRC2012_val_00000024.JPEG"]
    pk = _write_pickles(tmp_path / "pk", train, val, test)
    with pytest.raises(FastvipError, match=r"3 files listed in the pickles are missing .*_99\.JPEG.*--allow-missing"):
        split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    assert not (tmp_path / "out").exists()
    s = split(imagenet, tmp_path / "out", pickles=pk, allow_missing=True, console=Q)
    assert s["missing"] == 3 and s["train"]["images"] == 12
    # the list position still names the image: img_1 is absent, img_2 keeps its number
    assert sorted(os.listdir(tmp_path / "out" / "test" / "imgs")) == ["img_0.JPEG", "img_2.JPEG"]


def test_too_few_images_or_missing_val_class(imagenet, tmp_path):
    with pytest.raises(FastvipError, match=r"6 of 6 classes have too few images for 5 per class.*n00000000 \(12 train, 4 val\)"):
        split(imagenet, tmp_path / "out", per_class=5, console=Q)
    with pytest.raises(FastvipError, match=r"too few images for 7 per class.*\(12 train"):
        split(imagenet, tmp_path / "out", per_class=7, console=Q)
    root = tmp_path / "root"
    for p in imagenet.glob("*/*/*.JPEG"):
        if not (p.parts[-3] == "val" and p.parts[-2] == WNIDS[2]):
            (root / p.parts[-3] / p.parts[-2]).mkdir(parents=True, exist_ok=True)
            os.link(p, root / p.parts[-3] / p.parts[-2] / p.name)
    with pytest.raises(FastvipError, match=r"1 of 6 classes.*n00000002 \(no folder in .*val\)"):
        split(root, tmp_path / "out", per_class=2, console=Q)
    assert not (tmp_path / "out").exists()


def test_output_must_be_empty_unless_force(imagenet, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FastvipError, match=r"is not empty \(holds notes\.txt\); use --force"):
        split(imagenet, out, per_class=2, console=Q)
    split(imagenet, out, per_class=2, seed=0, force=True, console=Q)
    first = listing(out)
    s = split(imagenet, out, per_class=3, seed=1, force=True, console=Q)  # replaces the previous split
    assert s["train"]["images"] == 18 and listing(out) != first
    assert len(list(out.glob("train/*/*"))) == 18 and (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == ["notes.txt", "split.json", "test", "train", "val"]
    # a folder that is not a split is never removed
    (out / "val" / WNIDS[0] / "deeper").mkdir()
    with pytest.raises(FastvipError, match=r"val does not look like a split"):
        split(imagenet, out, per_class=2, force=True, console=Q)
    # the ImageNet root itself is refused as output, even with --force
    with pytest.raises(FastvipError, match="must not contain each other"):
        split(imagenet, imagenet, per_class=2, force=True, console=Q)


def test_interrupted_split_leaves_no_layout(imagenet, tmp_path, monkeypatch):
    calls = []
    real = split_common._place

    def failing(src, dst, copy, state):
        calls.append(dst)
        if len(calls) == 10:
            raise KeyboardInterrupt
        real(src, dst, copy, state)
    monkeypatch.setattr(split_common, "_place", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        split(imagenet, out, per_class=2, console=Q)
    assert os.listdir(out) == []
    monkeypatch.setattr(split_common, "_place", real)
    (out / ".split-tmp-stale").mkdir()  # what a killed run leaves: ignored and removed
    split(imagenet, out, per_class=2, console=Q)
    assert sorted(os.listdir(out)) == ["split.json", "test", "train", "val"]


def test_labels_never_beside_the_images(imagenet, tmp_path):
    with pytest.raises(FastvipError, match="must not sit beside the images"):
        split(imagenet, tmp_path / "out", per_class=2, test_labels=tmp_path / "out" / "test" / "l.csv", console=Q)
    with pytest.raises(FastvipError, match="does not exist"):
        split(imagenet, tmp_path / "out", per_class=2, test_labels=tmp_path / "nope" / "l.csv", console=Q)


def test_val_names_resolve_into_imagenet_val_and_test_reuse_is_refused(imagenet, tmp_path):
    vfile = min((imagenet / "val" / WNIDS[1]).iterdir())
    train = [f"{w}_0.JPEG" for w in WNIDS]
    val = [f"{WNIDS[1]}/{vfile.name}"]  # an ImageNet-val file, named without val/
    pk = _write_pickles(tmp_path / "pk", train, val, [f"{WNIDS[2]}/{min((imagenet / 'val' / WNIDS[2]).iterdir()).name}"])
    split(imagenet, tmp_path / "out", pickles=pk, console=Q)
    assert (tmp_path / "out" / "val" / WNIDS[1] / vfile.name).samefile(vfile)
    pk = _write_pickles(tmp_path / "pk2", train, val, [vfile.name])
    with pytest.raises(FastvipError, match="1 test.pickle images are also in train.pickle or val.pickle"):
        split(imagenet, tmp_path / "out2", pickles=pk, console=Q)


# ---------------------------------------------------------------- Tiny ImageNet layout

TINY_WNIDS = ["n01443537", "n02099601", "n09193705"]
TINY_TRAIN, TINY_VAL = 8, 4
# val_annotations.txt deliberately not in file-name order: the test numbering must follow the file
TINY_ORDER = [7, 2, 11, 0, 5, 9, 1, 10, 3, 8, 6, 4]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny-imagenet-200 tree: 3 classes x 8 train, 12 val, 2 unlabelled test images, text files."""
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    rng = np.random.default_rng(1)
    img = lambda p: write_image(p, rng.integers(0, 255, (8, 8, 3)))
    for w in TINY_WNIDS:
        for j in range(TINY_TRAIN):
            img(root / "train" / w / "images" / f"{w}_{j}.JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text(
            "".join(f"{w}_{j}.JPEG\t0\t0\t7\t7\n" for j in range(TINY_TRAIN)))
    for i in range(len(TINY_ORDER)):
        img(root / "val" / "images" / f"val_{i}.JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{TINY_WNIDS[i % 3]}\t1\t2\t6\t7\n" for i in TINY_ORDER))
    for i in range(2):
        img(root / "test" / "images" / f"test_{i}.JPEG")
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(TINY_WNIDS)))  # not sorted, as shipped
    (root / "words.txt").write_text("".join(f"{w}\tthing {k}\n" for k, w in enumerate(TINY_WNIDS)))
    return root


def clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def test_tiny_imagenet_is_detected_and_split_like_vipriors(tiny, tmp_path):
    labels = tmp_path / "labels.csv"
    out = tmp_path / "out"
    s = split(tiny, out, per_class=3, seed=0, test_labels=labels, console=Q)
    assert sorted(os.listdir(out)) == ["split.json", "test", "train", "val"]
    assert s["layout"] == "tiny-imagenet" and s["mode"] == "random" and s["test_order"] == "val_annotations"
    assert json.loads((out / "split.json").read_text())["layout"] == "tiny-imagenet"
    for name in ("train", "val"):
        assert sorted(os.listdir(out / name)) == TINY_WNIDS
        assert all(len(os.listdir(out / name / w)) == 3 for w in TINY_WNIDS)
        assert s[name] == {"classes": 3, "images": 9}
    assert s["test"] == {"classes": 3, "images": 12} and s["missing"] == 0
    # train and val: disjoint, from Tiny ImageNet train, in their own class
    train_src = {inode(p): p.parts[-3] for p in tiny.glob("train/*/images/*.JPEG")}
    picked = {name: [p for p in out.glob(f"{name}/*/*")] for name in ("train", "val")}
    assert not {inode(p) for p in picked["train"]} & {inode(p) for p in picked["val"]}
    assert all(train_src.get(inode(p)) == p.parent.name for ps in picked.values() for p in ps)
    # test: every val image, img_<k> the k-th annotation line; Tiny ImageNet's own test/ never used
    imgs = out / "test" / "imgs"
    assert sorted(os.listdir(imgs)) == sorted(f"img_{k}.JPEG" for k in range(12))
    for k, i in enumerate(TINY_ORDER):
        assert (imgs / f"img_{k}.JPEG").samefile(tiny / "val" / "images" / f"val_{i}.JPEG")
    unlabelled = {inode(p) for p in tiny.glob("test/images/*")}
    assert not unlabelled & {inode(p) for p in out.rglob("*") if p.is_file()}
    assert not list(out.rglob("*.txt"))
    lines = labels.read_text().splitlines()
    assert lines[0] == "Image IDs,Predictions"
    assert lines[1:] == [f"img_{k}.JPEG,{i % 3}" for k, i in enumerate(TINY_ORDER)]  # val_i is class i % 3


def test_tiny_imagenet_draws_are_seeded(tiny, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        split(tiny, tmp_path / name, per_class=3, seed=seed, console=Q)
        runs[name] = listing(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    test_part = lambda r: {k: v for k, v in r.items() if k.startswith("test/")}
    assert test_part(runs["a"]) == test_part(runs["c"])  # test is all of val whatever the seed


def test_tiny_imagenet_through_the_cli(tiny, tmp_path, capsys):
    from fastvip.cli import main
    labels = tmp_path / "labels.csv"
    rc = main(["split", str(tiny), str(tmp_path / "out"), "--per-class", "3", "--seed", "2",
               "--test-labels", str(labels), "--quiet"])
    assert rc == 0 and len(labels.read_text().splitlines()) == 13
    assert json.loads((tmp_path / "out" / "split.json").read_text())["seed"] == 2
    capsys.readouterr()
    (tmp_path / "pk").mkdir()
    assert main(["split", str(tiny), str(tmp_path / "out2"), "--pickles", str(tmp_path / "pk")]) == 2
    err = capsys.readouterr().err
    assert "--pickles does not apply to the Tiny ImageNet tree" in err and err.count("\n") == 1
    assert not (tmp_path / "out2").exists()


def one_line_error(root, out, match, **kw) -> str:
    with pytest.raises(FastvipError, match=match) as e:
        split(root, out, console=Q, **kw)
    assert "\n" not in str(e.value)
    assert not out.exists()
    return str(e.value)


def test_tiny_imagenet_too_few_images_per_class(tiny, tmp_path):
    one_line_error(tiny, tmp_path / "out", r"3 of 3 classes have too few images for 5 per class "
                   r"\(need 10 in train/<wnid>/images.*n01443537 \(8 images\)", per_class=5)
    split(tiny, tmp_path / "ok", per_class=4, seed=0, console=Q)  # exactly all 8: still allowed


def test_tiny_imagenet_annotation_problems_are_one_line_errors(tiny, tmp_path):
    ann = lambda root: root / "val" / "val_annotations.txt"
    rows = ann(tiny).read_text().splitlines()
    # an image without its line: it would be an unlabelled test image
    root = clone(tiny, tmp_path / "unlisted")
    ann(root).unlink()
    ann(root).write_text("\n".join(rows[:-1]) + "\n")
    one_line_error(root, tmp_path / "out", r"1 images in .*val/images have no line in .*val_annotations\.txt "
                   r"\(first: val_4\.JPEG\)", per_class=2)
    # a malformed line, named by its number
    for bad in ("val_0.JPEG n01443537", "val_0.JPEG\tn01443537\t1\t2\tx\t7", "a/val_0.JPEG\tn01443537\t1\t2\t6\t7"):
        root = clone(tiny, tmp_path / f"bad{len(bad)}")
        ann(root).unlink()
        ann(root).write_text("\n".join(rows[:2] + [bad] + rows[3:]) + "\n")
        one_line_error(root, tmp_path / "out", r"val_annotations\.txt line 3: expected FILE, WNID and 4 box "
                       r"integers separated by tabs, found", per_class=2)
    # a class with no train folder, and a file annotated twice
    for bad, match in (("val_11.JPEG\tn99999999\t1\t2\t6\t7", r"line 3: val_11\.JPEG has class n99999999"),
                       (rows[0], r"lines 1 and 3 both annotate val_7\.JPEG")):
        root = clone(tiny, tmp_path / f"cls{len(bad)}")
        ann(root).unlink()
        ann(root).write_text("\n".join(rows[:2] + [bad] + rows[3:]) + "\n")
        one_line_error(root, tmp_path / "out", match, per_class=2)


def test_tiny_imagenet_missing_val_images_need_allow_missing(tiny, tmp_path):
    root = clone(tiny, tmp_path / "root")
    (root / "val" / "images" / "val_11.JPEG").unlink()  # the 3rd annotation line
    one_line_error(root, tmp_path / "out", r"1 files listed in val/val_annotations\.txt are missing .*"
                   r"line 3: val/images/val_11\.JPEG.*--allow-missing", per_class=2)
    labels = tmp_path / "labels.csv"
    s = split(root, tmp_path / "out", per_class=2, allow_missing=True, test_labels=labels, console=Q)
    assert s["missing"] == 1 and s["test"]["images"] == 11
    names = set(os.listdir(tmp_path / "out" / "test" / "imgs"))
    assert "img_2.JPEG" not in names and "img_11.JPEG" in names  # the others keep their numbers
    assert "img_2.JPEG" not in labels.read_text()


def test_layout_detection_errors_name_both_layouts(tiny, tmp_path):
    both = r"expected ImageNet-2012 \(train/<wnid>/\*\.JPEG .*\) or Tiny ImageNet \(train/<wnid>/images/"
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", tmp_path / "out", r"has no train/ or val/ folder; " + both)
    root = clone(tiny, tmp_path / "half")
    (root / "val" / "val_annotations.txt").unlink()
    one_line_error(root, tmp_path / "out", r"incomplete Tiny ImageNet tree \(no val/val_annotations\.txt\); " + both)
    root = clone(tiny, tmp_path / "wnids")
    (root / "wnids.txt").unlink()
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS[:2]) + "\n")
    one_line_error(root, tmp_path / "out", r"wnids\.txt does not match .*1 train/ folders it does not list "
                   r"\(first: n09193705\)", per_class=2)
    assert split_mod.detect_layout(tiny) == "tiny-imagenet"
