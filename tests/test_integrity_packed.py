"""Packed files carry a checksum per sample (image, label and id) and one of their header and
tables; every loader checks them before decoding, ``fastvip verify`` lists every damaged sample,
and damage that keeps a file's size is named by sample index and id, never trained on silently."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastvip.data import checksum
from fastvip.data.packed import (DamagedPacked, damaged_samples, file_checksums, image_records, meta_path,
                                 open_packed)
from fastvip.errors import FastvipError
from fastvip.loaders import build_loader
from fastvip.verify import verify

CPU = torch.device("cpu")
LOADERS = ["ffcv", "resident", "dali"]


def _copy(src, dst):
    shutil.copy(src, dst)
    shutil.copy(meta_path(src), meta_path(dst))
    return dst


@pytest.fixture
def val(colour_data, tmp_path):
    return _copy(colour_data["val"], tmp_path / "val.beton")


def _poke(path, offset, n=16):
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(n)
        f.seek(offset)
        f.write(bytes((b + 1) % 256 for b in old))  # every byte changed, the size kept


def _table_offset(path, sample, field, part):
    """Where ``part`` of ``field``'s metadata of ``sample`` lies in the file (FFCV's layout)."""
    from ffcv.reader import Reader
    from ffcv.types import HeaderType
    r = Reader(str(path))
    md = r.metadata.dtype
    sub = md[f"f{r.field_names.index(field)}"]
    return (HeaderType.itemsize + r.field_descriptors.nbytes + sample * md.itemsize
            + md.fields[f"f{r.field_names.index(field)}"][1] + (sub.fields[part][1] if part else 0))


def _damage(path, where, sample=7):
    rec = image_records(path)
    if where == "image":
        _poke(path, int(rec.ptrs[sample] + rec.sizes[sample] // 2))
    elif where == "label":
        _poke(path, _table_offset(path, sample, "label", None), 1)
    elif where == "id":
        from ffcv.reader import Reader
        r = Reader(str(path))
        _poke(path, int(r.metadata[f"f{r.field_names.index('id')}"]["ptr"][sample]), 2)
    elif where == "height":
        _poke(path, _table_offset(path, sample, "image", "height"), 1)
    elif where == "alloc_table":
        from ffcv.reader import Reader
        _poke(path, int(Reader(str(path)).header["alloc_table_ptr"]) + 3, 4)
    elif where == "header":
        _poke(path, 0, 8)
    elif where == "cut":  # a copy taken while the file was still being written
        with open(path, "r+b") as f:
            f.truncate(int(rec.ptrs[sample]))


def test_pack_writes_checksums_that_match_the_file(val):
    packed = open_packed(val)
    assert packed.checksums is not None and len(packed.checksums) == packed.num_samples
    side = json.loads(meta_path(val).read_text())["entries"][0]["checksums"]
    assert side == file_checksums(val)  # what pack wrote is what the file holds
    assert not len(damaged_samples(packed))
    report = verify([val], decode=True)
    assert report.problems == [] and report.checked == [str(val)]
    # the checksum is XXH3-64 of the image bytes seeded by label and id: computed independently here
    import xxhash
    rec, data = image_records(val), val.read_bytes()
    i = 5
    seed = xxhash.xxh3_64_intdigest(int(packed.labels[i]).to_bytes(8, "little", signed=True)
                                    + packed.ids[i].encode())
    assert packed.checksums[i] == xxhash.xxh3_64_intdigest(data[rec.ptrs[i]:rec.ptrs[i] + rec.sizes[i]], seed=seed)


@pytest.mark.parametrize("where", ["image", "label", "id", "height", "alloc_table"])
def test_verify_names_the_damaged_sample(val, where):
    packed = open_packed(val)
    _damage(val, where)
    report = verify([val])
    assert report.problems, where
    text = "\n".join(report.problems)
    if where in ("image", "label", "id"):  # the sample itself
        assert "sample 7 (id " in text, text
        if where != "id":
            assert f"(id {packed.ids[7]})" in text
    assert "Traceback" not in text and all("\n" not in p for p in report.problems)


@pytest.mark.parametrize("where", ["header", "cut"])
def test_damaged_header_or_cut_file_is_one_line(val, where):
    _damage(val, where)
    with pytest.raises(FastvipError) as e:
        open_packed(val)
    assert "\n" not in str(e.value)
    if where == "cut":
        assert "cut short" in str(e.value)
    assert verify([val]).problems == [str(e.value)]


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("train", [True, False])
def test_every_loader_stops_on_a_damaged_sample_naming_it(val, kind, train):
    packed = open_packed(val)
    _damage(val, "image", sample=3)
    _damage(val, "image", sample=30)
    with pytest.raises(FastvipError) as e:
        loader = build_loader(kind, val, train=train, batch_size=8, image_size=16, device=CPU, workers=1)
        for _ in loader:
            pass
    msg = str(e.value)
    assert f"sample 3 (id {packed.ids[3]})" in msg and "2 damaged samples in all" in msg, msg
    assert "fastvip verify" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", LOADERS)
def test_skip_damaged_leaves_them_out_and_counts_them(val, kind, capfd):
    _damage(val, "image", sample=3)
    loader = build_loader(kind, val, train=False, batch_size=8, image_size=16, device=CPU, workers=1,
                          skip_damaged=True)
    n = sum(len(labels) for _, labels in loader)
    assert n == open_packed(val).num_samples - 1 and loader.damaged_skipped == 1
    assert "sample 3" in capfd.readouterr().err


def _strip_checksums(path):
    """``path`` as a file packed before fastvip wrote checksums."""
    side = json.loads(meta_path(path).read_text())
    for e in side["entries"]:
        del e["checksums"]
    meta_path(path).write_text(json.dumps(side))


def _corrupt_entropy(path, sample) -> tuple[int, bytes]:
    """A corrupt entropy-coded segment in the middle of ``sample`` that libjpeg only warns about
    (it decodes grey); where it lies, and the bytes it replaced."""
    rec = image_records(path)
    at = int(rec.ptrs[sample] + rec.sizes[sample] // 2)
    with open(path, "r+b") as f:
        f.seek(at)
        original = f.read(8)
        f.seek(at)
        f.write(b"\xff\xd0" * 4)
    return at, original


def test_a_file_packed_before_checksums_reads_with_a_notice_and_verify_adds_them(val, capfd):
    _strip_checksums(val)
    assert open_packed(val).checksums is None
    assert "carries no per-sample checksums" in capfd.readouterr().err
    report = verify([val])
    assert not report.problems and "no per-sample checksums" in report.notes[0]
    report = verify([val], add_checksums=True)
    assert not report.problems and "checksums added" in report.notes[0]
    _damage(val, "image")
    assert "sample 7" in "\n".join(verify([val]).problems)


def _warned_under_valid_checksums(val, sample):
    """Damage libjpeg only warns about in ``sample``, from before the checksums were added
    (they vouch for it)."""
    _strip_checksums(val)
    _corrupt_entropy(val, sample)
    verify([val], add_checksums=True)
    assert not verify([val]).problems


def test_decode_finds_damage_under_valid_checksums(val):
    """Damage from before the checksums were added (they vouch for it): only a decode sees it."""
    _warned_under_valid_checksums(val, 9)
    problems = verify([val], decode=True).problems
    assert any("sample 9 (id" in p and "libjpeg" in p for p in problems), problems


@pytest.mark.parametrize("kind", ["ffcv", "resident"])
def test_libjpeg_warnings_in_a_loader_are_damage(val, kind, capfd):
    """The centre crop (ffcv) and the whole-image store fill (resident) decode the damaged rows."""
    _warned_under_valid_checksums(val, 9)
    ids = open_packed(val).ids
    with pytest.raises(FastvipError, match=rf"sample 9 \(id {ids[9]}\) is damaged: libjpeg reported corrupt data"
                                           r".*`fastvip verify --decode "):
        for _ in build_loader(kind, val, train=False, batch_size=8, image_size=16, device=CPU, workers=1):
            pass
    loader = build_loader(kind, val, train=False, batch_size=8, image_size=16, device=CPU, workers=1,
                          skip_damaged=True)
    assert sum(len(labels) for _, labels in loader) == len(ids) - 1 and loader.damaged_skipped == 1
    assert "sample 9" in capfd.readouterr().err


def test_ffcv_verdicts_hold_for_one_pass(val):
    """A warning depends on the crop, so a sample is judged anew each pass: repaired (in a file
    without checksums), it is back in the next pass."""
    _strip_checksums(val)
    at, original = _corrupt_entropy(val, 9)
    n = open_packed(val).num_samples
    loader = build_loader("ffcv", val, train=False, batch_size=8, image_size=16, device=CPU, workers=1,
                          skip_damaged=True)
    assert sum(len(labels) for _, labels in loader) == n - 1 and loader.damaged_skipped == 1
    with open(val, "r+b") as f:
        f.seek(at)
        f.write(original)
    loader.set_epoch(1)
    assert sum(len(labels) for _, labels in loader) == n and loader.damaged_skipped == 1


def test_merge_refuses_a_damaged_source(colour_data, tmp_path):
    from fastvip.data.merge import merge
    train = _copy(colour_data["train"], tmp_path / "train.beton")
    val = _copy(colour_data["val"], tmp_path / "val.beton")
    _damage(val, "image", sample=2)
    with pytest.raises(FastvipError, match=r"sample 2 \(id .*a merge copies sound samples only"):
        merge([train, val])


def test_table_damage_is_found_at_open_and_names_samples(val):
    _damage(val, "label", sample=11)
    with pytest.raises(DamagedPacked) as e:
        open_packed(val)
    assert list(e.value.samples) == [11] and "sample 11 (id" in str(e.value)


def test_verify_cli_exit_codes_and_json(val, cpu_env):
    run = [sys.executable, "-m", "fastvip", "verify", str(val)]
    clean = subprocess.run(run, capture_output=True, text=True, env=cpu_env)
    assert clean.returncode == 0, clean.stderr
    _damage(val, "image", sample=4)
    bad = subprocess.run(run + ["--json"], capture_output=True, text=True, env=cpu_env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    out = json.loads(bad.stdout)
    assert not out["ok"] and any("sample 4 (id" in p for p in out["problems"])


def test_checksum_of_the_numba_path_equals_the_python_one():
    """The FFCV decoder's compiled call and the Python path (writer, verify, resident, DALI)
    compute the same XXH3-64, which is xxhash's own."""
    import xxhash
    from fastvip.loaders.native import xxh3_seeded
    data = np.frombuffer(bytes(range(256)) * 40, np.uint8)
    seeds = np.array([1, 2**63 + 5], np.uint64)
    got = checksum.image_sums(data, [3, 1000], [500, 7000], seeds)
    assert got[0] == xxhash.xxh3_64_intdigest(data[3:503].tobytes(), seed=1)
    assert got[1] == xxhash.xxh3_64_intdigest(data[1000:8000].tobytes(), seed=2**63 + 5)
    assert xxh3_seeded(data[3:503], seeds[0]) == got[0] and xxh3_seeded(data[1000:8000], seeds[1]) == got[1]


def test_a_run_stops_on_a_damaged_sample_or_skips_and_counts_it(colour_data, tmp_path):
    """``fastvip run`` on a damaged train file: one-line error naming the sample before anything
    is trained on it; with ``skip_damaged`` the run finishes and every epoch line counts it."""
    from fastvip.console import Console
    from fastvip.recipe import Recipe
    from fastvip.train import run
    train = _copy(colour_data["train"], tmp_path / "train.beton")
    packed = open_packed(train)
    _damage(train, "image", sample=5)
    recipe = Recipe(model="test_resnet", train_data=str(train), val_data=str(colour_data["val"]), image_size=16,
                    epochs=2, batch_size=16, workers=1, loader="resident").validate()
    with pytest.raises(FastvipError, match=rf"sample 5 \(id {packed.ids[5]}\) is damaged"):
        run(recipe, tmp_path / "stop", console=Console(quiet=True))
    import dataclasses
    run(dataclasses.replace(recipe, skip_damaged=True), tmp_path / "skip", console=Console(quiet=True))
    lines = [json.loads(l) for l in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [l["damaged_skipped"] for l in lines if l["event"] == "epoch"] == [1, 1]
