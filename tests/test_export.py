"""``fastvip export``: a run as a timm model folder that timm loads without fastvip."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config

from fastvip import cli
from fastvip.methods.augment import normalize
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.infer.export import export
from fastvip.methods.model import build_model, inference_weights, load_checkpoint, save_checkpoint
from fastvip.methods.net import adapt_init_weights
from fastvip.recipe import from_dict

Q = Console(quiet=True)
CLASSES = ["class_0", "class_1", "class_2", "class_3"]


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory):
    """A trained cross-entropy run, and an ArcFace + auxiliary-head checkpoint made from it.

    The second is what ``init_from`` builds from the first (CE classifier -> ArcFace weights,
    a fresh auxiliary head), saved as ``best.pt``: a second training run would add ~10 s.
    """
    root = tmp_path_factory.mktemp("export")
    recipe = from_dict(json.loads((trained_run / "recipe.json").read_text()))
    ce = load_checkpoint(trained_run / "best.pt")
    arc_recipe = dataclasses.replace(recipe, arcface=True, arcface_scale=16.0, aux_weight=0.3)
    torch.manual_seed(0)
    arc = build_model(arc_recipe, len(CLASSES))
    state, fresh = adapt_init_weights(arc, ce["inference"])
    assert fresh and all(k.startswith("aux.") for k in fresh)
    (root / "arc").mkdir()
    save_checkpoint(root / "arc" / "best.pt", {"inference": state, "weights": "raw", "epoch": 1,
                                               "recipe": arc_recipe.to_dict(), "classes": CLASSES})
    return {"ce": trained_run, "arc": root / "arc"}


def fastvip_model(ckpt_path):
    """The model as ``fastvip predict`` loads it."""
    ckpt = load_checkpoint(ckpt_path)
    recipe = from_dict(ckpt["recipe"])
    net = build_model(recipe, len(ckpt["classes"]))
    net.load_state_dict(inference_weights(ckpt)[0])
    return net.eval()


def images(n=6, size=24):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def timm_input(u8, cfg):
    """timm's ToTensor + Normalize on the same pixels."""
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (u8.float() / 255 - mean) / std


def snapshot(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_ce_export_loads_in_timm_with_the_same_logits_and_preprocessing(runs, tmp_path):
    run_dir, out = runs["ce"], tmp_path / "ce-timm"
    # a trainer mid-save leaves a temp checkpoint; export only reads the renamed ones
    (run_dir / ".best.pt.tmp-inflight").write_bytes(b"half a checkpoint")
    before = snapshot(run_dir)
    res = export(run_dir, out, console=Q)
    assert snapshot(run_dir) == before
    (run_dir / ".best.pt.tmp-inflight").unlink()
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    best = json.loads((run_dir / "best.json").read_text())
    assert res["weights"] == best["weights"] and res["classifier"] == "linear" and res["aux_head"] is None

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 4
    assert config["label_names"] == CLASSES
    assert config["fastvip"]["checkpoint"] == "best.pt" and config["fastvip"]["epoch"] == best["epoch"]
    assert "tag" not in config["pretrained_cfg"] and "license" not in config["pretrained_cfg"]

    m = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    from safetensors.torch import load_file
    assert set(load_file(out / "model.safetensors")) == set(timm.create_model("test_resnet", num_classes=4).state_dict())
    cfg = resolve_data_config({}, model=m)
    assert cfg["input_size"] == (3, 24, 24) and cfg["crop_pct"] == 0.8 and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == pytest.approx([0.485, 0.456, 0.406]) and cfg["std"] == pytest.approx([0.229, 0.224, 0.225])
    from PIL import Image
    assert create_transform(**cfg)(Image.new("RGB", (50, 37))).shape == (3, 24, 24)

    u8 = images()
    with torch.no_grad():
        want = fastvip_model(run_dir / "best.pt")(normalize(u8))
        got = m(timm_input(u8, cfg))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_arcface_export_keeps_the_predicted_class_and_says_so(runs, tmp_path):
    out = tmp_path / "arc-timm"
    res = export(runs["arc"], out, console=Q)
    assert res["classifier"] == "arcface_as_linear" and res["aux_head"] == "left_out"
    config = json.loads((out / "config.json").read_text())
    notes = config["fastvip"]
    assert notes["classifier"] == "arcface_as_linear" and notes["arcface_scale"] == 16.0
    assert "same predicted class" in notes["classifier_note"] and notes["aux_head"] == "left_out"

    m = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    assert not any(k.startswith(("aux", "arcface")) for k in m.state_dict())
    u8 = images(n=32)
    cfg = resolve_data_config({}, model=m)
    with torch.no_grad():
        want = fastvip_model(runs["arc"] / "best.pt")(normalize(u8))
        x = timm_input(u8, cfg)
        got = m(x)
        features = m.forward_head(m.forward_features(x), pre_logits=True)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert not torch.allclose(got.softmax(1), want.softmax(1), atol=1e-3)
    # the documented way back to fastvip's logits
    torch.testing.assert_close(16.0 * got / features.norm(dim=1, keepdim=True), want, atol=1e-4, rtol=1e-4)


def test_cli_export_last_weights_load_in_a_python_without_fastvip(runs, tmp_path, cpu_env, capsys):
    out, inp = tmp_path / "model", tmp_path / "x.pt"
    assert cli.main(["export", str(runs["ce"]), str(out), "--weights", "last"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {out}")
    u8 = images()
    torch.save(u8, inp)
    script = ("import sys; sys.modules['fastvip'] = None\n"  # any import of fastvip fails
              "import timm, torch\n"
              f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
              "cfg = timm.data.resolve_data_config({}, model=m)\n"
              f"u8 = torch.load('{inp}')\n"
              "mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ('mean', 'std'))\n"
              "with torch.no_grad():\n"
              f"    torch.save(m((u8.float() / 255 - mean) / std), '{tmp_path / 'y.pt'}')\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cpu_env,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    with torch.no_grad():
        want = fastvip_model(runs["ce"] / "last.pt")(normalize(u8))
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), want, atol=1e-5, rtol=1e-5)
    assert json.loads((out / "config.json").read_text())["fastvip"]["checkpoint"] == "last.pt"


def _error(capsys, *argv):
    assert cli.main(["export", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_and_out_dir_rules(runs, tmp_path, capsys):
    run_dir = runs["ce"]
    assert "neither a run directory nor a checkpoint" in _error(capsys, tmp_path / "nope", tmp_path / "o")
    assert "has no best.pt" in _error(capsys, tmp_path, tmp_path / "o")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in _error(capsys, tmp_path / "junk.pt", tmp_path / "o")
    assert "holds the checkpoint" in _error(capsys, run_dir, run_dir, "--force")
    assert "holds the checkpoint" in _error(capsys, run_dir / "best.pt", run_dir.parent, "--force")

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "is not empty; use --force" in _error(capsys, run_dir, out)
    assert "does not look like an export" in _error(capsys, run_dir, out, "--force")
    assert (out / "notes.txt").read_text() == "mine"

    (out / "notes.txt").unlink()  # an empty folder is fine without --force
    assert cli.main(["export", str(run_dir), str(out), "--quiet"]) == 0
    assert "is not empty; use --force" in _error(capsys, run_dir, out, "--weights", "last")
    assert cli.main(["export", str(run_dir), str(out), "--weights", "last", "--force", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["fastvip"]["checkpoint"] == "last.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_export_leaves_the_previous_one(runs, tmp_path, monkeypatch):
    import fastvip.infer.export as export_mod
    import timm.models
    out = tmp_path / "model"
    export(runs["ce"], out, console=Q)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_written(model, directory, **kw):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(timm.models, "save_for_hf", half_written)
    with pytest.raises(OSError, match="disk full"):
        export(runs["ce"], out, force=True, console=Q)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    real = export_mod.timm_model

    def off_by_a_bit(net, recipe, num_classes):
        model, notes = real(net, recipe, num_classes)
        with torch.no_grad():
            model.get_classifier().bias.add_(0.1)
        return model, notes

    monkeypatch.setattr(export_mod, "timm_model", off_by_a_bit)
    with pytest.raises(FastvipError, match="does not reproduce fastvip's logits"):
        export(runs["ce"], tmp_path / "other", console=Q)
    assert not (tmp_path / "other").exists()
