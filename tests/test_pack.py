import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.listing import scan_source
from fastvip.data.pack import pack
from fastvip.data.packed import META_SUFFIX, fingerprint, open_packed
from fastvip.data.transcode import transcode

from conftest import colour_image, write_image

Q = Console(quiet=True)


def _rng_img(seed, h=40, w=50):
    return colour_image(np.random.default_rng(seed), (120, 80, 200), h, w)


def test_labelled_round_trip_keeps_all_classes(tmp_path):
    src = tmp_path / "src"
    write_image(src / "b_cls" / "x1.JPEG", _rng_img(0))
    write_image(src / "b_cls" / "x2.png", _rng_img(1), fmt="PNG")
    (src / "c_empty_after_skip").mkdir(parents=True)
    (src / "c_empty_after_skip" / "bad.JPEG").write_bytes(b"not an image at all")
    write_image(src / "d_cls" / "y1.jpeg", _rng_img(2))
    write_image(src / "a_cls" / "z1.JPG", _rng_img(3))
    result = pack(src, tmp_path / "t.beton", console=Q)

    packed = open_packed(tmp_path / "t.beton")
    # the all-skipped class keeps its index: classes are the sorted folder names
    assert packed.classes == ["a_cls", "b_cls", "c_empty_after_skip", "d_cls"]
    assert packed.labelled
    assert packed.ids == ["z1.JPG", "x1.JPEG", "x2.png", "y1.jpeg"]
    assert packed.labels.tolist() == [0, 1, 1, 3]
    assert [s[0] for s in result.skipped] == [os.path.join("c_empty_after_skip", "bad.JPEG")]
    sidecar = json.loads(Path(str(tmp_path / "t.beton") + META_SUFFIX).read_text())
    assert len(sidecar["entries"]) == 1
    meta = sidecar["entries"][0]
    assert meta["skipped"][0]["reason"] == "not a readable image"
    assert meta["num_samples"] == 4


@pytest.mark.parametrize("layout", ["files", "imgs"])
def test_unlabelled_layouts(tmp_path, layout):
    folder = tmp_path / "test" / ("imgs" if layout == "imgs" else "")
    for i in (0, 2, 10, 1):
        write_image(folder / f"img_{i}.JPEG", _rng_img(i))
    pack(tmp_path / "test", tmp_path / "u.beton", console=Q)
    packed = open_packed(tmp_path / "u.beton")
    assert not packed.labelled and packed.classes == []
    assert packed.labels.tolist() == [-1] * 4
    assert packed.ids == ["img_0.JPEG", "img_1.JPEG", "img_2.JPEG", "img_10.JPEG"]  # natural order


def test_mixed_source_and_missing_source_are_errors(tmp_path):
    write_image(tmp_path / "mixed" / "a.JPEG", _rng_img(0))
    write_image(tmp_path / "mixed" / "cls" / "b.JPEG", _rng_img(1))
    with pytest.raises(FastvipError, match="mixes image files and sub-folders"):
        scan_source(tmp_path / "mixed")
    with pytest.raises(FastvipError, match="does not exist"):
        scan_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastvipError, match="no images"):
        scan_source(tmp_path / "empty")


def test_refuses_overwrite_then_force_replaces(tmp_path):
    write_image(tmp_path / "s" / "c" / "a.JPEG", _rng_img(0))
    out = tmp_path / "o.beton"
    pack(tmp_path / "s", out, console=Q)
    first = fingerprint(out)
    with pytest.raises(FastvipError, match="--force"):
        pack(tmp_path / "s", out, console=Q)
    assert fingerprint(out) == first
    write_image(tmp_path / "s" / "c" / "b.JPEG", _rng_img(1))
    pack(tmp_path / "s", out, console=Q, force=True)
    assert open_packed(out).num_samples == 2
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or p.suffix == ".spool"]
    assert leftovers == []


def test_strict_turns_skip_into_error_and_leaves_no_output(tmp_path):
    write_image(tmp_path / "s" / "c" / "a.JPEG", _rng_img(0))
    (tmp_path / "s" / "c" / "empty.JPEG").write_bytes(b"")
    out = tmp_path / "o.beton"
    with pytest.raises(FastvipError, match="--strict"):
        pack(tmp_path / "s", out, strict=True, console=Q)
    assert not out.exists() and not Path(str(out) + META_SUFFIX).exists()


def test_transcode_caps_size_and_converts_modes(tmp_path):
    big = write_image(tmp_path / "big.JPEG", _rng_img(0, h=300, w=900))
    ok, (data, h, w) = transcode(os.fspath(big), 256, 90)
    assert ok and max(h, w) == 256 and (h, w) == (85, 256)
    assert Image.open(__import__("io").BytesIO(data)).size == (w, h)

    rgba = np.dstack([_rng_img(1), np.full((40, 50), 128, np.uint8)])
    p = tmp_path / "alpha.JPEG"  # a PNG with the wrong extension: content decides
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(p, format="PNG")
    ok, (data, h, w) = transcode(os.fspath(p), 512, 90)
    assert ok and Image.open(__import__("io").BytesIO(data)).mode == "RGB"

    full = big.read_bytes()
    (tmp_path / "trunc.JPEG").write_bytes(full[: len(full) // 2])
    assert transcode(os.fspath(tmp_path / "trunc.JPEG"), 512, 90) == (False, "truncated image")
    write_image(tmp_path / "tiny.png", _rng_img(2, h=4, w=4), fmt="PNG")
    good, reason = transcode(os.fspath(tmp_path / "tiny.png"), 512, 90)
    assert not good and reason.startswith("too small")


def test_upright_rgb_jpeg_is_kept_byte_for_byte(tmp_path):
    p = write_image(tmp_path / "a.JPEG", _rng_img(0), quality=75)
    ok, (data, h, w) = transcode(os.fspath(p), 512, 90)
    assert ok and data == p.read_bytes() and (h, w) == (40, 50)


def test_a_jpeg_libjpeg_warns_about_is_re_encoded_not_kept(tmp_path):
    """PIL decodes it without a word; the loaders would count libjpeg's warning as damage."""
    from fastvip.data.jpegcheck import jpeg_problem
    from loaders.jpeg import decode_problem
    good = write_image(tmp_path / "a.JPEG", _rng_img(0), quality=75).read_bytes()
    bad = tmp_path / "b.JPEG"
    bad.write_bytes(good[:-2] + b"\x12\x34\x56" + good[-2:])  # extraneous bytes before the end marker
    assert jpeg_problem(good) is None and "extraneous bytes" in jpeg_problem(bad.read_bytes())
    ok, (data, h, w) = transcode(os.fspath(bad), 512, 90)
    assert ok and data != bad.read_bytes() and (h, w) == (40, 50)
    assert jpeg_problem(data) is None and decode_problem(np.frombuffer(data, np.uint8), h, w) is None


def test_sample_larger_than_ffcv_default_page_packs(tmp_path):
    # ~4 MB of incompressible JPEG: larger than a 2 MiB FFCV page. The page size must
    # grow, otherwise FFCV's writer worker raises and DatasetWriter hangs.
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    write_image(tmp_path / "s" / "c" / "noise.png", noise, fmt="PNG")
    res = pack(tmp_path / "s", tmp_path / "n.beton", max_side=2000, quality=100, console=Q)
    assert res.num_images == 1
    assert open_packed(tmp_path / "n.beton").ids == ["noise.png"]


def test_sidecar_mismatch_is_detected(tmp_path):
    write_image(tmp_path / "s" / "c" / "a.JPEG", _rng_img(0))
    write_image(tmp_path / "t" / "c" / "a.JPEG", _rng_img(1))
    write_image(tmp_path / "t" / "c" / "b.JPEG", _rng_img(2))
    pack(tmp_path / "s", tmp_path / "a.beton", console=Q)
    pack(tmp_path / "t", tmp_path / "b.beton", console=Q)
    os.replace(tmp_path / "b.beton", tmp_path / "a.beton")
    with pytest.raises(FastvipError, match="does not match"):
        open_packed(tmp_path / "a.beton")
    orphan = tmp_path / "orphan.beton"
    orphan.write_bytes(b"x")
    with pytest.raises(FastvipError, match="no orphan.beton.meta.json"):
        open_packed(orphan)


def test_merge_train_and_val_for_training(colour_data, tmp_path):
    import shutil

    from fastvip.data.merge import merge, merged_path
    from fastvip.train import run
    from fastvip.recipe import Recipe
    files = []
    for split in ("train", "val"):  # copies: the merge is written beside the first file
        for suffix in (".beton", ".beton.meta.json"):
            shutil.copy(str(colour_data[split]).replace(".beton", suffix), tmp_path / f"{split}{suffix}")
        files.append(tmp_path / f"{split}.beton")
    quiet = Console(quiet=True)
    out = merge(files, console=quiet)
    assert out == merged_path(files) == tmp_path / "train+val.beton"
    merged, train, val = open_packed(out), open_packed(files[0]), open_packed(files[1])
    assert merged.num_samples == 144 and merged.classes == train.classes
    assert list(merged.labels) == list(train.labels) + list(val.labels)
    assert merged.ids == train.ids + val.ids
    stamp = out.stat().st_mtime_ns
    assert merge(files, console=quiet) == out and out.stat().st_mtime_ns == stamp  # reused
    # the merged file decodes to the same pixels as its sources (JPEG bytes copied, not re-encoded)
    import torch
    from fastvip.loaders import build_loader
    kw = dict(train=False, batch_size=200, image_size=24, device=torch.device("cpu"), workers=1)
    a = next(iter(build_loader("ffcv", out, **kw)))[0].clone()
    b = torch.cat([next(iter(build_loader("ffcv", f, **kw)))[0].clone() for f in files])
    assert torch.equal(a, b)
    summary = run(Recipe(model="test_resnet", train_data=[str(f) for f in files], epochs=1, batch_size=16,
                         image_size=24, workers=1), tmp_path / "run", console=quiet)
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["num_train"] == 144 and summary["best_epoch"] == 1
    with pytest.raises(FastvipError, match="only labelled files can be merged"):
        merge([files[0], colour_data["test"]], console=quiet)
