"""benchmarks/throughput.py runs end to end and keeps its JSON contract (no speed asserted here)."""
import json
import subprocess
import sys

from conftest import REPO, make_colour_tree


def test_throughput_json_contract(tmp_path, cpu_env):
    src = make_colour_tree(tmp_path / "src", per_class=12, seed=4)
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "benchmarks/throughput.py", "--source", src, "--loader",
                        "ffcv,ffcv-stock,dali,torchvision", "--mode", "loader,model,e2e", "--model", "test_resnet",
                        "--res", "32", "--batch-size", "8", "--steps", "2", "--workers", "2", "--passes", "3",
                        "--json", out], cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    results = json.loads(out.read_text())
    by = {(r["loader"], r["mode"]): r for r in results}
    assert set(by) == {(n, m) for n in ("ffcv", "ffcv-stock", "dali", "torchvision") for m in ("loader", "e2e")} | {
        ("synthetic", "model")}
    assert by[("dali", "loader")]["n_images"] == 48
    for r in results:
        assert {"loader", "mode", "img_per_s", "batch_size", "res", "device", "n_images"} <= r.keys()
        assert r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"] and r["img_per_s"] > 0
        assert r["batch_size"] == 8 and r["res"] == 32 and r["device"] == "cpu"
    assert by[("ffcv", "loader")]["n_images"] == 48  # 4 x 12, all full batches of 8
    assert by[("torchvision", "loader")]["x_baseline"] == 1.0
    assert 0 < by[("ffcv", "e2e")]["e2e_over_model"]
    assert by[("ffcv", "e2e")]["model"] == "test_resnet"


def test_throughput_rejects_bad_arguments(tmp_path, cpu_env):
    p = subprocess.run([sys.executable, "benchmarks/throughput.py", "--loader", "torchvision", "--passes", "2"],
                       cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "--passes" in p.stderr
