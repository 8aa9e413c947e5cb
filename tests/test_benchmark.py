"""benchmarks/throughput.py runs end to end and keeps its JSON contract (no speed asserted here)."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, make_colour_tree


def test_throughput_json_contract(tmp_path, cpu_env):
    src = make_colour_tree(tmp_path / "src", per_class=12, seed=4)
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "benchmarks/throughput.py", "--source", src, "--loader",
                        "ffcv,ffcv-stock,dali,torchvision", "--mode", "loader,model,e2e", "--model", "test_resnet",
                        "--res", "32", "--batch-size", "8", "--steps", "2", "--workers", "2", "--passes", "3", "--pass-epochs", "2",
                        "--json", out], cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    results = json.loads(out.read_text())
    by = {(r["loader"], r["mode"]) + ((r["step"],) if r["mode"] == "model" else ()): r for r in results}
    # the tresnet_xl recipe augments on the device: its full step, its plain step, timm's step
    assert set(by) == {(n, m) for n in ("ffcv", "ffcv-stock", "dali", "torchvision") for m in ("loader", "e2e")} | {
        ("synthetic", "model", s) for s in ("fastvip", "fastvip-plain", "timm-train.py")}
    assert by[("dali", "loader")]["n_images"] == 96  # two epochs per timed pass
    for r in results:
        assert {"loader", "mode", "img_per_s", "batch_size", "res", "device", "n_images"} <= r.keys()
        assert r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"] and r["img_per_s"] > 0
        assert r["batch_size"] == 8 and r["res"] == 32 and r["device"] == "cpu"
    assert by[("ffcv", "loader")]["n_images"] == 96  # 2 x 4 x 12, all full batches of 8
    assert by[("torchvision", "loader")]["x_baseline"] == 1.0
    model = by[("synthetic", "model", "fastvip")]["img_per_s"]
    assert by[("ffcv", "e2e")]["e2e_over_model"] == pytest.approx(by[("ffcv", "e2e")]["img_per_s"] / model)
    plain, timm_step = by[("synthetic", "model", "fastvip-plain")], by[("synthetic", "model", "timm-train.py")]
    assert plain["x_timm"] == pytest.approx(plain["img_per_s"] / timm_step["img_per_s"])
    assert timm_step["optimizer"] == "sgd" and timm_step["channels_last"] is False  # test_resnet: not measured
    assert by[("ffcv", "e2e")]["model"] == "test_resnet"


def test_throughput_rejects_bad_arguments(tmp_path, cpu_env):
    p = subprocess.run([sys.executable, "benchmarks/throughput.py", "--loader", "torchvision", "--passes", "2"],
                       cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "--passes" in p.stderr
