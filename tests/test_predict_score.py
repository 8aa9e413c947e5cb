
import numpy as np
import pytest

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.packed import open_packed
from fastvip.infer.predict import predict, read_submission, score, write_submission

Q = Console(quiet=True)


@pytest.fixture
def trained(trained_run):
    return trained_run


def test_predict_val_matches_training_eval_and_writes_npz(trained, colour_data, tmp_path):
    import json
    best = json.loads((trained / "best.json").read_text())
    res = predict(trained, colour_data["val"], out=tmp_path / "p.npz", console=Q)
    assert res["top1"] == pytest.approx(best["top1"], abs=1e-6)
    assert res["weights"] == best["weights"]
    z = np.load(tmp_path / "p.npz")
    assert z["probs"].dtype == np.float32 and z["probs"].shape == (48, 4)
    np.testing.assert_allclose(z["probs"].sum(1), 1.0, atol=1e-5)
    assert 100.0 * (z["probs"].argmax(1) == z["labels"]).mean() == pytest.approx(res["top1"], abs=1e-9)
    assert list(z["ids"]) == open_packed(colour_data["val"]).ids
    assert list(z["classes"]) == ["class_0", "class_1", "class_2", "class_3"]
    assert str(z["tta"]) == "none"


def test_flip_tta_averages_two_views(trained, colour_data, tmp_path):
    plain = predict(trained, colour_data["val"], out=tmp_path / "a.npz", console=Q)
    flip = predict(trained, colour_data["val"], tta="flip", out=tmp_path / "b.npz", console=Q)
    a, b = np.load(tmp_path / "a.npz")["probs"], np.load(tmp_path / "b.npz")["probs"]
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert abs(plain["top1"] - flip["top1"]) <= 25.0


def test_predict_defaults_to_the_recipes_eval_size(trained, colour_data, tmp_path):
    import dataclasses
    from fastvip.methods.model import load_checkpoint, save_checkpoint
    from fastvip.recipe import from_dict
    ckpt = load_checkpoint(trained / "best.pt")
    recipe = from_dict(ckpt["recipe"])
    assert recipe.eval_size == 0 and recipe.image_size == 24
    ckpt["recipe"] = dataclasses.replace(recipe, eval_size=32).to_dict()
    save_checkpoint(tmp_path / "at32.pt", ckpt)
    at32 = predict(tmp_path / "at32.pt", colour_data["val"], out=tmp_path / "a.npz", console=Q)
    asked = predict(trained, colour_data["val"], size=32, out=tmp_path / "b.npz", console=Q)
    plain = predict(trained, colour_data["val"], out=tmp_path / "c.npz", console=Q)
    assert (at32["size"], asked["size"], plain["size"]) == (32, 32, 24)
    a, b, c = (np.load(tmp_path / f"{n}.npz")["probs"] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(FastvipError, match="--size"):
        predict(trained, colour_data["val"], size=4, console=Q)


def test_submission_round_trip_and_score(trained, colour_data, tmp_path):
    sub = tmp_path / "sub.csv"
    res = predict(trained, colour_data["test"], submission=sub, console=Q)
    text = sub.read_text().splitlines()
    assert text[0] == "Image IDs,Predictions"
    assert len(text) == 11 and text[1].split(",")[0] == "img_0.JPEG"
    assert all(0 <= int(row.split(",")[1]) < 4 for row in text[1:])
    assert res["top1"] is None  # unlabelled
    # the test images were drawn with colour i % 4
    labels = tmp_path / "labels.csv"
    write_submission(labels, [f"img_{i}.JPEG" for i in range(10)], [i % 4 for i in range(10)])
    s = score(sub, labels)
    assert s["n"] == 10 and s["top1"] >= 70.0
    assert score(labels, labels)["top1"] == 100.0


def test_score_uses_common_ids_and_rejects_bad_files(tmp_path):
    write_submission(tmp_path / "truth.csv", ["a", "b", "c", "d"], [0, 1, 2, 3])
    write_submission(tmp_path / "part.csv", ["a", "b", "x"], [0, 2, 1])
    s = score(tmp_path / "part.csv", tmp_path / "truth.csv")
    assert s == {"top1": 50.0, "n": 2, "missing": 2, "extra": 1}
    (tmp_path / "bad.csv").write_text("id,pred\na,1\n")
    with pytest.raises(FastvipError, match="first line must be"):
        read_submission(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("Image IDs,Predictions\na,1\na,2\n")
    with pytest.raises(FastvipError, match="duplicate id"):
        read_submission(tmp_path / "dup.csv")
    (tmp_path / "nan.csv").write_text("Image IDs,Predictions\na,cat\n")
    with pytest.raises(FastvipError, match="not a class index"):
        read_submission(tmp_path / "nan.csv")
    write_submission(tmp_path / "other.csv", ["zz"], [1])
    with pytest.raises(FastvipError, match="share no image ids"):
        score(tmp_path / "other.csv", tmp_path / "truth.csv")


def test_predict_rejects_missing_run(tmp_path, colour_data):
    with pytest.raises(FastvipError, match="neither a run directory nor a checkpoint"):
        predict(tmp_path / "nope", colour_data["val"], console=Q)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FastvipError, match="has no best.pt"):
        predict(tmp_path / "empty_run", colour_data["val"], console=Q)
