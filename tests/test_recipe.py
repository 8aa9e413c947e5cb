import dataclasses
import json

import pytest

from conftest import REPO
from fastvip.errors import FastvipError
from fastvip.recipe import Recipe, field_names, from_dict, load_recipe, parse_overrides, resolve


def test_overrides_are_typed():
    got = parse_overrides(["epochs=3", "lr=1e-3", "ema=true", "model=resnet18", "train_data=a.beton,b.beton"])
    assert got == {"epochs": 3, "lr": 1e-3, "ema": True, "model": "resnet18",
                   "train_data": ["a.beton", "b.beton"]}
    assert parse_overrides(["train_data=t.beton", "compile=0"]) == {"train_data": "t.beton", "compile": False}
    # optional fields: a tuple of ints, an int, a float, and none for unset
    assert parse_overrides(["tta_scales=224,320", "tencrop_size=448", "opt_eps=1e-3"]) == \
        {"tta_scales": (224, 320), "tencrop_size": 448, "opt_eps": 1e-3}
    assert parse_overrides(["tta_scales=64", "tencrop_size=none"]) == {"tta_scales": (64,), "tencrop_size": None}


@pytest.mark.parametrize("pair,message", [
    ("epocs=3", "unknown recipe field 'epochs'?|did you mean 'epochs'"),
    ("epochs=1.5", "'epochs' expects int, got '1.5'"),
    ("lr=fast", "'lr' expects float"),
    ("ema=maybe", "'ema' expects bool"),
    ("noequals", "expects key=value"),
    ("tta_scales=224,big", "'tta_scales' expects comma-separated ints or none"),
    ("opt_eps=tiny", "'opt_eps' expects float or none"),
])
def test_override_errors(pair, message):
    with pytest.raises(FastvipError, match=message):
        parse_overrides([pair])


def test_unknown_key_names_closest_field():
    with pytest.raises(FastvipError) as e:
        parse_overrides(["label_smoothin=0.2"])
    assert str(e.value) == "unknown recipe field 'label_smoothin'; did you mean 'label_smoothing'?"


def test_validation_rejects_impossible_values():
    for kw, msg in [(dict(epochs=0), "epochs"), (dict(amp="fp8"), "amp"), (dict(crop_scale_min=0), "crop_scale_min"),
                    (dict(tta_scales=(224, 4)), "tta_scales"), (dict(tta_scales=()), "tta_scales"),
                    (dict(tencrop_size=0), "tencrop_size"), (dict(opt_eps=0.0), "opt_eps"),
                    (dict(opt_eps=1e-3, optimizer="sgd"), "sgd has no epsilon")]:
        with pytest.raises(FastvipError, match=msg):
            dataclasses.replace(Recipe(), **kw).validate()


def test_shipped_recipes_load_and_variant_replaces_base():
    base = resolve(REPO / "recipes" / "tresnet_xl.py")
    assert (base.model, base.batch_size, base.lr, base.epochs, base.image_size) == ("tresnet_xl", 256, 0.1, 250, 224)
    assert (base.momentum, base.weight_decay, base.label_smoothing, base.warmup_epochs) == (0.9, 1e-4, 0.1, 1.0)
    assert base.scaled_lr() == pytest.approx(0.1)
    assert base.description.startswith("DeepBlueAI 2020")
    demo = load_recipe(REPO / "recipes" / "demo_digits.py")
    assert demo.model == "resnet18" and demo.weight_decay != base.weight_decay
    assert demo.momentum == base.momentum and demo.optimizer == base.optimizer


def test_text_and_json_round_trip(tmp_path):
    r = resolve(REPO / "recipes" / "tresnet_xl.py", ["model=resnet18", "epochs=2", "train_data=a,b"])
    p = tmp_path / "r.py"
    p.write_text(r.to_text())
    assert load_recipe(p) == r
    assert from_dict(json.loads(json.dumps(r.to_dict()))) == dataclasses.replace(r, train_data=["a", "b"])
    assert r.train_files == ["a", "b"]
    assert r.tta_scales == (224, 320, 380, 448)  # a JSON list back as the recipe's tuple (the equality above)
    # recipe.json of a run made before the test-time and epsilon fields: their defaults, today's behaviour
    old = {k: v for k, v in r.to_dict().items() if k not in ("tta_scales", "tencrop_size", "opt_eps")}
    loaded = from_dict(json.loads(json.dumps(old)))
    assert (loaded.tta_scales, loaded.tencrop_size, loaded.opt_eps) == (None, None, None)


def test_bad_recipe_files(tmp_path):
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(FastvipError, match="must define `recipe = Recipe"):
        load_recipe(tmp_path / "none.py")
    (tmp_path / "broken.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(FastvipError, match="failed to load: ValueError: boom"):
        load_recipe(tmp_path / "broken.py")
    with pytest.raises(FastvipError, match="does not exist"):
        load_recipe(tmp_path / "missing.py")


def test_scaled_lr_is_linear_in_batch():
    assert Recipe(lr=0.1, lr_batch=256, batch_size=128).scaled_lr() == pytest.approx(0.05)
    assert "lr_batch" in field_names()
