"""``.beton`` files written by FFCV's own tools (no sidecar, no ``id`` field), in each storage mode."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.reader import Reader
from ffcv.writer import DatasetWriter

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.loaders import build_loader
from fastvip.loaders.ffcv import FFCVLoader
from fastvip.methods.model import load_checkpoint
from fastvip.data.merge import merge, merged_path
from fastvip.data.packed import open_packed
from fastvip.infer.predict import predict
from fastvip.recipe import Recipe
from fastvip.train import run

from conftest import COLOURS, colour_image

CPU = torch.device("cpu")
Q = Console(quiet=True)
CLASSES, PER_CLASS = 3, 12


def _images(seed=0):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(CLASSES):
        for _ in range(PER_CLASS):
            h, w = int(rng.integers(28, 64)), int(rng.integers(28, 64))
            images.append(colour_image(rng, COLOURS[k], h, w).astype(np.uint8))
            labels.append(k)
    return images, labels


def write_ffcv(path, images, labels, fields=None, **image_kw):
    """As ffcv-imagenet's write_imagenet.py does: FFCV's DatasetWriter, fields image + label
    (a third field, if any, holds the sample index)."""
    fields = fields or {"image": RGBImageField(**image_kw), "label": IntField()}

    class Samples:
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return (images[i], labels[i], i)[:len(fields)]

    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(Samples())
    return path


@pytest.fixture(scope="module")
def ffcv_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv_written")
    images, labels = _images()
    out = {"images": images, "labels": labels}
    for name in ("jpg", "raw"):
        out[name] = write_ffcv(root / f"{name}.beton", images, labels, write_mode=name, jpeg_quality=95)
    # smart: raw when the pixels take at most 6000 bytes, else JPEG (a mix at these sizes); and a
    # field fastvip does not read
    smart = RGBImageField(write_mode="smart", smart_threshold=6000, jpeg_quality=95)
    out["smart"] = write_ffcv(root / "smart.beton", images, labels,
                              fields={"image": smart, "label": IntField(), "index": IntField()})
    return out


def _modes(path):
    reader = Reader(str(path))
    return reader.metadata[f"f{reader.field_names.index('image')}"]["mode"]


def _centre_crop_resized(img, size, eval_crop=0.875):
    h, w = img.shape[:2]
    side = int(eval_crop * min(h, w))
    top, left = (h - side) // 2, (w - side) // 2
    crop = img[top:top + side, left:left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)  # as FFCV's resize_crop


def _all(loader):
    batches = [(x.clone(), y.clone()) for x, y in loader]  # FFCV recycles its buffers
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_classes_and_ids_default_to_indices_with_one_warning(ffcv_files, tmp_path, capsys):
    path = shutil.copy(ffcv_files["jpg"], tmp_path / "fresh.beton")  # a path not yet warned about
    capsys.readouterr()
    packed = open_packed(path)
    again = open_packed(path)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "fresh.beton.meta.json" in err[0]
    assert "label indices 0..2" in err[0]
    assert packed.classes == again.classes == ["0", "1", "2"] and packed.labelled and not packed.sidecar
    assert packed.ids == [str(i) for i in range(36)]
    assert packed.labels.tolist() == ffcv_files["labels"]
    assert [(h, w) for h, w in zip(packed.heights, packed.widths)] == [i.shape[:2] for i in ffcv_files["images"]]


def test_eval_and_canvas_read_jpeg_and_raw_samples_of_one_file(ffcv_files):
    modes = _modes(ffcv_files["smart"])
    assert 0 < modes.sum() < len(modes)  # both storage modes, per sample
    # the pixels stored: raw samples hold the originals; JPEG ones, decoded here by OpenCV
    pixels = [img if mode == 1 else cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                                 cv2.COLOR_BGR2RGB)
              for img, mode, data in zip(ffcv_files["images"], modes, _stored(ffcv_files["smart"]))]
    # 32 px: no crop here is large enough for a DCT-scaled JPEG decode, which smooths this noise
    ev = build_loader("ffcv", ffcv_files["smart"], train=False, batch_size=10, image_size=32, device=CPU,
                      workers=1)
    x, y = _all(ev)
    assert x.shape == (36, 3, 32, 32) and y.tolist() == ffcv_files["labels"]
    for i, img in enumerate(pixels):
        diff = np.abs(x[i].permute(1, 2, 0).numpy().astype(int) - _centre_crop_resized(img, 32).astype(int)).mean()
        # raw: only rounding differs; JPEG: also the decoder's upsampling. A wrong crop or layout gives tens.
        assert diff < (0.5 if modes[i] == 1 else 4.0), (i, modes[i], diff)
    canvas, _ = _all(FFCVLoader(ffcv_files["smart"], train=False, batch_size=36, image_size=24, device=CPU,
                                workers=1, canvas=True))
    for i, img in enumerate(pixels):
        h, w = img.shape[:2]
        whole = canvas[i, :, :h, :w].permute(1, 2, 0).numpy()
        if modes[i] == 1:
            assert np.array_equal(whole, img), i
        else:
            assert np.abs(whole.astype(int) - img).mean() < 2.0, i
        assert not canvas[i, :, h:].any() and not canvas[i, :, :, w:].any()  # zero outside the image


def test_train_on_ffcv_written_files_merged_with_raw_storage(ffcv_files, tmp_path):
    files = [shutil.copy(ffcv_files[n], tmp_path / f"{n}.beton") for n in ("raw", "smart")]
    summary = run(Recipe(model="test_resnet", train_data=[str(f) for f in files], val_data=str(ffcv_files["jpg"]),
                         epochs=1, batch_size=16, image_size=24, workers=1), tmp_path / "run", console=Q)
    assert summary["best_epoch"] == 1 and summary["best_top1"] is not None
    assert load_checkpoint(tmp_path / "run" / "best.pt")["classes"] == ["0", "1", "2"]
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["num_train"] == 64 and start["num_val"] == 36  # 72 merged, last partial batch dropped
    # the merge copied every sample's stored bytes and mode, raw ones included
    merged = merged_path(files)
    assert open_packed(merged).sidecar and open_packed(merged).labels.tolist() == 2 * ffcv_files["labels"]
    assert _modes(merged).tolist() == _modes(files[0]).tolist() + _modes(files[1]).tolist()
    assert _stored(merged) == _stored(files[0]) + _stored(files[1])


def _stored(path):
    reader = Reader(str(path))
    md = reader.metadata[f"f{reader.field_names.index('image')}"]
    table = np.sort(reader.alloc_table, order="ptr")
    sizes = table["size"][np.searchsorted(table["ptr"], md["data_ptr"])]
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return [bytes(data[int(p):int(p) + int(s)]) for p, s in zip(md["data_ptr"], sizes)]


def test_train_batches_from_raw_storage_and_dali_refuses_it(ffcv_files):
    tr = build_loader("ffcv", ffcv_files["raw"], train=True, batch_size=8, image_size=20, device=CPU, workers=1)
    x, y = _all(tr)
    assert x.shape == (32, 3, 20, 20) and x.float().std() > 10
    assert sorted(y.tolist()) != y.tolist() and set(y.tolist()) == {0, 1, 2}  # shuffled, all classes
    pytest.importorskip("nvidia.dali")
    for name in ("raw", "smart"):
        with pytest.raises(FastvipError, match=r"stores raw pixels for \d+ images; the DALI loader reads JPEG"):
            build_loader("dali", ffcv_files[name], train=False, batch_size=8, image_size=20, device=CPU)


def test_dali_reads_a_smart_file_that_is_all_jpeg(tmp_path):
    pytest.importorskip("nvidia.dali")
    images, labels = _images(1)
    path = write_ffcv(tmp_path / "smart0.beton", images, labels, write_mode="smart", smart_threshold=0)
    assert not _modes(path).any()
    x, y = _all(build_loader("dali", path, train=False, batch_size=12, image_size=20, device=CPU, workers=1))
    assert x.shape == (36, 3, 20, 20) and y.tolist() == labels


@pytest.fixture
def named_run(trained_run):
    return trained_run


def test_predict_with_a_named_run_reads_labels_as_indices(named_run, ffcv_files, tmp_path):
    res = predict(named_run, ffcv_files["jpg"], out=tmp_path / "p.npz", console=Q)
    z = np.load(tmp_path / "p.npz")
    assert list(z["classes"]) == ["class_0", "class_1", "class_2", "class_3"]  # the run's, not the file's
    assert z["labels"].tolist() == ffcv_files["labels"] and list(z["ids"]) == [str(i) for i in range(36)]
    assert res["top1"] == pytest.approx(100.0 * (z["probs"].argmax(1) == z["labels"]).mean(), abs=1e-6)
    images, labels = _images(2)
    bad = write_ffcv(tmp_path / "five.beton", images[:6], [0, 1, 2, 3, 4, 1], write_mode="jpg")
    with pytest.raises(FastvipError, match=r"five.beton has label 4 \(sample 4\), out of range for the 4 classes"):
        predict(named_run, bad, console=Q)


def test_fastvip_file_without_its_sidecar_is_still_refused(colour_data, tmp_path):
    lost = shutil.copy(colour_data["val"], tmp_path / "val.beton")  # the .beton only
    with pytest.raises(FastvipError, match="no val.beton.meta.json beside it but was written by fastvip pack"):
        open_packed(lost)


def test_merge_reads_sidecarless_labels_as_indices_into_the_named_classes(colour_data, tmp_path):
    images, _ = _images()
    five = write_ffcv(tmp_path / "five.beton", images[:5], [0, 1, 2, 3, 4], write_mode="jpg")
    with pytest.raises(FastvipError, match=r"five.beton has label 4 \(sample 4\), out of range for the 4 classes "
                                           r"of .*val.beton"):
        merge([colour_data["val"], five], console=Q)


def test_unusable_sidecarless_files_are_one_line_errors(tmp_path):
    images, _ = _images()
    only_image = write_ffcv(tmp_path / "img.beton", images[:4], [0] * 4, fields={"image": RGBImageField()})
    with pytest.raises(FastvipError, match=r"lacks the fields .* image \(RGBImageField\) and label \(IntField\); "
                                           r"it has image \(RGBImageField\)$"):
        open_packed(only_image)
    negative = write_ffcv(tmp_path / "neg.beton", images[:3], [0, -1, 2], write_mode="jpg")
    with pytest.raises(FastvipError, match="sample 1 has label -1"):
        open_packed(negative)
    own_id = write_ffcv(tmp_path / "own_id.beton", images[:3], [0, 1, 2],
                        fields={"image": RGBImageField(), "label": IntField(), "id": IntField()})
    assert open_packed(own_id).fields == ("image", "label", "id")  # an IntField id is not fastvip's
    text = tmp_path / "notes.beton"
    text.write_text("not an FFCV file at all")
    with pytest.raises(FastvipError, match="has no notes.beton.meta.json beside it and is not a readable FFCV file"):
        open_packed(text)
