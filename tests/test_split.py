"""``fastvip split``: a fake ImageNet root made at test time, both selection modes, output safety."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image

from fastvip import split as split_mod
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.split import split

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
    from fastvip.predict import (
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
    monkeypatch.setattr(split_mod.os, "link", no_link)
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
    real = split_mod._place

    def failing(src, dst, copy, state):
        calls.append(dst)
        if len(calls) == 10:
            raise KeyboardInterrupt
        real(src, dst, copy, state)
    monkeypatch.setattr(split_mod, "_place", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        split(imagenet, out, per_class=2, console=Q)
    assert os.listdir(out) == []
    monkeypatch.setattr(split_mod, "_place", real)
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
