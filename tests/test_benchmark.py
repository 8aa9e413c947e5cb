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


def _time_to_accuracy():
    import importlib.util
    spec = importlib.util.spec_from_file_location("time_to_accuracy", REPO / "benchmarks" / "time_to_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_accuracy_x_baseline_only_at_no_less_accuracy():
    tta = _time_to_accuracy()
    entries = {"baseline": {"done": True, "wall_s": 3000.0, "last_top1": 21.0},
               "fast": {"done": True, "wall_s": 900.0, "last_top1": 21.0},       # equal accuracy: valid
               "faster": {"done": True, "wall_s": 600.0, "last_top1": 20.99},    # 5x, but less accurate
               "running": {"done": False, "segments": []}}
    tta.score_entries(entries)
    assert entries["fast"]["x_baseline"] == pytest.approx(3000 / 900, abs=1e-3) and entries["fast"]["x_baseline_valid"]
    assert entries["faster"]["x_baseline"] is None and not entries["faster"]["x_baseline_valid"]
    assert entries["faster"]["wall_ratio"] == pytest.approx(5.0)
    assert "x_baseline" not in entries["running"] and "x_baseline" not in entries["baseline"]
    del entries["baseline"]
    assert tta.score_entries(entries)["fast"]["x_baseline"] is None  # nothing to compare with


def test_time_to_accuracy_counts_a_cut_segment_up_to_its_last_checkpointed_epoch():
    tta = _time_to_accuracy()
    # segment 1 was cut by a session end 70 s in, after epochs ending at 30 s and 60 s; segment 2 resumed
    segments = [{"start": 1000.0, "end": None}, {"start": 5000.0, "end": 5050.0}]
    epochs = [{"epoch": 1, "time": 1030.0, "val_top1": 5.0, "val_top1_ema": 6.0, "val_n": 10},
              {"epoch": 2, "time": 1060.0, "val_top1": 7.0, "val_top1_ema": 8.0, "val_n": 10},
              {"epoch": 3, "time": 5040.0, "val_top1": 9.0, "val_top1_ema": 9.5, "val_n": 10}]
    assert tta.segment_seconds(segments, [e["time"] for e in epochs]) == [60.0, 50.0]
    points = tta.curve(segments, epochs, "ema")
    assert [p["wall_s"] for p in points] == [30.0, 60.0, 100.0]
    assert [p["top1"] for p in points] == [6.0, 8.0, 9.5]  # the shipped (EMA) weights, never the better one
    assert [p["top1"] for p in tta.curve(segments, epochs, "raw")] == [5.0, 7.0, 9.0]
    assert tta.same_machine({"cpu": "x", "cores": 2, "cpu_flags_sha1": "a", "gpu": None, "torch": "2"},
                            {"cpu": "x", "cores": 2, "cpu_flags_sha1": "b", "gpu": None, "torch": "2"}) is False


def test_gpu_check_without_a_gpu_reports_every_part_skipped(tmp_path, cpu_env):
    p = subprocess.run([sys.executable, "tools/gpu_check.py", "--out", str(tmp_path)], cwd=REPO, env=cpu_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(doc["parts"]) == ["correctness", "throughput", "memory"]
    assert all(r["status"] == "skipped" and r["reason"] == "no CUDA device" for r in doc["parts"].values())
    assert doc["machine"]["cuda"] is False and "| correctness | skipped |" in (tmp_path / "gpu_check.md").read_text()
    bad = subprocess.run([sys.executable, "tools/gpu_check.py", "--parts", "speed", "--out", str(tmp_path)],
                         cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "gpu_check: unknown part 'speed'; choose from correctness, throughput, memory"]
