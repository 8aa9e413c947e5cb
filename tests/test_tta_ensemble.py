"""Test-time views (geometry, flips, seeding), TTA predictions, and probability ensembles."""
import numpy as np
import pytest
import torch

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.infer.predict import ensemble, predict, save_probs
from fastvip.infer.tta import cut, default_scales, plan

Q = Console(quiet=True)


def test_view_plans_geometry():
    h, w, idx = np.array([40, 60]), np.array([80, 60]), np.array([5, 9])
    (v,) = plan("none", h, w, idx, image_size=32)
    # centre crop of 0.875 x shorter side: 35 px on the 40x80 image, 52 px on the 60x60 one
    assert v.size == 32 and not v.flip and v.boxes.tolist() == [[22, 2, 57, 37], [4, 4, 56, 56]]
    assert [x.flip for x in plan("flip", h, w, idx, image_size=32)] == [False, True]

    ten = plan("tencrop", h, w, idx, image_size=32)
    assert len(ten) == 10 and {x.size for x in ten} == {64} and [x.flip for x in ten[:2]] == [False, True]
    corners = [x.boxes[0].tolist() for x in ten[::2]]  # 40x80 image, side 35
    assert corners == [[0, 0, 35, 35], [45, 0, 80, 35], [0, 5, 35, 40], [45, 5, 80, 40], [22, 2, 57, 37]]

    ms = plan("multiscale", h, w, idx, image_size=224)
    assert default_scales(224) == [224, 320, 380, 448]
    assert len(ms) == 16 and [x.size for x in ms[::4]] == [224, 320, 380, 448]
    for x in ms[2::4]:  # the seeded random crops, inside the image
        b = x.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        # square image: 80-100 % of the area; the 2:1 image cannot hold that with a ratio
        # in [3/4, 4/3], so torchvision's fallback applies: full height, ratio 4/3, centred
        sq = b[1]
        assert 0.78 <= (sq[2] - sq[0]) * (sq[3] - sq[1]) / 3600 <= 1.0
        assert b[0].tolist() == [13, 0, 66, 40]
    # keyed on the file index: the same sample gets the same views in any batch
    alone = plan("multiscale", h[1:], w[1:], idx[1:], image_size=224)
    assert all(np.array_equal(a.boxes[1], b.boxes[0]) for a, b in zip(ms, alone))
    assert not np.array_equal(ms[2].boxes, ms[6].boxes)  # another random crop per scale


def test_cut_extracts_the_box_and_mirrors():
    img = torch.zeros(1, 3, 40, 80)
    img[..., 40:] = 255.0  # right half bright
    (v,) = plan("none", np.array([40]), np.array([80]), np.array([0]), image_size=16)
    out = cut(img, v)
    assert out.shape == (1, 3, 16, 16)
    # the crop spans x 22..57: left part dark, right part bright
    assert out[..., :6].mean() < 10 and out[..., 10:].mean() > 245
    v.flip = True
    assert torch.equal(cut(img, v), out.flip(3))


@pytest.fixture(scope="module")
def trained(colour_data, tmp_path_factory):
    from fastvip.recipe import Recipe
    from fastvip.train import run
    run_dir = tmp_path_factory.mktemp("tta") / "run"
    run(Recipe(model="test_resnet", train_data=str(colour_data["train"]), val_data=str(colour_data["val"]),
               image_size=24, epochs=2, batch_size=16, lr=0.4, warmup_epochs=0.5, crop_scale_min=0.3,
               workers=2, tta_scales=(16, 20), tencrop_size=28).validate(), run_dir, console=Q)
    return run_dir


def test_tta_sizes_come_from_the_recipe():
    from fastvip.recipe import Recipe
    from fastvip.infer.tta import tta_sizes
    # unset (a custom recipe, or a run saved before the fields existed): derived from image_size
    assert tta_sizes(Recipe(image_size=320)) == ([320, 457, 543, 640], 640)
    report = Recipe(image_size=448, tta_scales=(224, 320, 380, 448), tencrop_size=448)
    assert tta_sizes(report) == ([224, 320, 380, 448], 448)
    assert tta_sizes(report, [64, 96], 100) == ([64, 96], 100)  # --scales / --tencrop-size win


# the trained recipe says tta_scales=(16, 20), tencrop_size=28 (unset: 24 x (1, 320/224, ...), 48)
@pytest.mark.parametrize("tta,override,sizes", [("multiscale", None, [16, 20]), ("multiscale", [24, 32], [24, 32]),
                                                ("tencrop", None, [28]), ("tencrop", 40, [40])])
def test_predict_views_take_the_recipe_sizes_unless_overridden(trained, colour_data, tmp_path, monkeypatch, tta,
                                                               override, sizes):
    import fastvip.infer.predict as predict_mod
    seen, real_plan = set(), predict_mod.plan

    def spy(*args, **kw):
        views = real_plan(*args, **kw)
        seen.update(v.size for v in views)
        return views
    monkeypatch.setattr(predict_mod, "plan", spy)
    kw = {"scales" if tta == "multiscale" else "tencrop_size": override}
    res = predict(trained, colour_data["val"], tta=tta, out=tmp_path / "p.npz", console=Q, **kw)
    assert seen == set(sizes)
    z = np.load(tmp_path / "p.npz")
    assert str(z["tta"]) == tta and z["probs"].shape == (48, 4)
    np.testing.assert_allclose(z["probs"].astype(np.float32).sum(1), 1.0, atol=5e-3)
    if tta == "multiscale":
        assert z["tta_scales"].tolist() == sizes
    else:
        assert [int(z["tta_tencrop_size"])] == sizes
    assert res["top1"] > 25.0 and res["img_per_s"] > 0


def test_ensemble_is_the_weighted_mean(tmp_path):
    ids, classes = ["a.JPEG", "b.JPEG", "c.JPEG", "d.JPEG"], ["x", "y"]
    # d's two classes round to one float16 value: stored as float16, its argmax would flip to x
    p1 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4999, 0.5001]], np.float32)
    p2 = np.array([[0.3, 0.7], [0.4, 0.6], [0.1, 0.9], [0.4999, 0.5001]], np.float32)
    save_probs(tmp_path / "1.npz", ids, p1, classes, tta="none", labels=np.array([0, 1, 1, 1]))
    save_probs(tmp_path / "2.npz", ids, p2, classes, tta="flip", labels=np.array([0, 1, 1, 1]))
    r = ensemble([tmp_path / "1.npz", tmp_path / "2.npz"], submission=tmp_path / "s.csv", out=tmp_path / "e.npz")
    mean = np.load(tmp_path / "e.npz")["probs"]
    np.testing.assert_allclose(mean, (p1 + p2) / 2, rtol=1e-6)
    assert (tmp_path / "s.csv").read_text() == "Image IDs,Predictions\na.JPEG,0\nb.JPEG,1\nc.JPEG,1\nd.JPEG,1\n"
    assert r["top1"] == 100.0
    ensemble([tmp_path / "1.npz", tmp_path / "2.npz"], weights=[1, 3], submission=tmp_path / "w.csv")
    assert (tmp_path / "w.csv").read_text().splitlines()[1] == "a.JPEG,1"  # 0.25*0.9+0.75*0.3 < 0.5


def test_ensemble_refuses_mismatches(tmp_path):
    p = np.full((2, 2), 0.5, np.float32)
    save_probs(tmp_path / "a.npz", ["a", "b"], p, ["x", "y"], tta="none")
    save_probs(tmp_path / "ids.npz", ["a", "z"], p, ["x", "y"], tta="none")
    save_probs(tmp_path / "order.npz", ["b", "a"], p, ["x", "y"], tta="none")
    save_probs(tmp_path / "cls.npz", ["a", "b"], p, ["x", "w"], tta="none")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = [("ids.npz", "other ids than .*1 extra, 1 missing"), ("order.npz", "other ids"),
             ("cls.npz", "other classes"), ("junk.npz", "not a probabilities .npz")]
    for name, msg in cases:
        with pytest.raises(FastvipError, match=msg):
            ensemble([tmp_path / "a.npz", tmp_path / name], submission=tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(FastvipError, match="2 values for 1 files"):
        ensemble([tmp_path / "a.npz"], weights=[1, 2], submission=tmp_path / "s.csv")
