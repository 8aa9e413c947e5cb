"""benchmarks/throughput.py runs end to end and keeps its JSON contract (no speed asserted here)."""
import json
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

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


def _bench(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_change_its_error_and_the_signal_rule():
    ab = _bench("ablation")
    assert ab.binomial_se(20.0, 10_000) == pytest.approx(0.4)  # sqrt(0.2 * 0.8 / 10,000) = 0.4 points
    base = {"row": "a", "top1": {0: 20.0, 1: 21.0}}                # two seeds, spread 1.0
    big = {"row": "b", "top1": {0: 23.0}}                          # one seed: compared on seed 0 only
    small = {"row": "c", "top1": {0: 20.9}}
    c = ab.compare(big, base, 10_000)
    assert c["seeds"] == [0] and c["change"] == pytest.approx(3.0) and c["signal"]
    assert c["se"] == pytest.approx((0.4 ** 2 + ab.binomial_se(23.0, 10_000) ** 2) ** 0.5)
    assert not ab.compare(small, base, 10_000)["signal"]           # 0.9 points: under 2 SE (~1.15)
    # beyond 2 SE but within the seed spread of its reference row: not signal
    assert not ab.compare({"row": "d", "top1": {0: 21.0, 1: 22.0}}, {"row": "e", "top1": {0: 19.0, 1: 23.5}},
                          1_000_000)["signal"]
    assert ab.compare({"row": "f", "top1": {1: 30.0}}, big, 10_000)["change"] is None  # no common seed
    md = ab.table("t", [dict(base, recipe="ra", ref=None, seconds=60.0),
                        dict(big, recipe="rb", ref="a", seconds=120.0),
                        dict(small, recipe="rc", ref="a", seconds=None)], 10_000)
    lines = md.splitlines()
    assert "| a | `ra` | s0: 20.00, s1: 21.00 | 20.50 |" in lines[4] and "| 1.00 |" in lines[4]
    assert "+3.00" in lines[5] and "| signal |" in lines[5] and "2 min" in lines[5]
    assert "+0.90" in lines[6] and "within noise" in lines[6] and "inference only" in lines[6]


def _fake_fastvip(calls):
    """Stands in for ``fastvip`` in the ablation study: checks each command against the real
    parser, and writes what run / predict / ensemble would (a metrics line, probabilities)."""
    import numpy as np
    from fastvip.cli import build_parser
    from fastvip.infer.predict import ensemble, save_probs

    def sh(*args):
        argv = [str(a) for a in args]
        parsed = build_parser().parse_args(argv)  # exits (SystemExit) on a command fastvip would refuse
        calls.append(argv)
        if argv[0] == "run":
            out = Path(parsed.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.jsonl").write_text('{"event": "start", "time": 0.0}\n{"event": "epoch", "time": 60.0}\n')
        elif argv[0] == "predict":
            rng = np.random.default_rng(zlib.crc32(" ".join(argv).encode()))
            labels = np.arange(40) % 4
            save_probs(parsed.out, [f"i{k}" for k in range(40)], rng.random((40, 4)).astype(np.float32),
                       ["a", "b", "c", "d"], tta="none", labels=labels)
            if parsed.submission:
                Path(parsed.submission).write_text("Image IDs,Predictions\n")
        elif argv[0] == "ensemble":
            ensemble(parsed.probs, out=parsed.out, submission=parsed.submission)
    return sh


def test_ablation_rows_commands_and_submissions(tmp_path, monkeypatch):
    ab = _bench("ablation")
    # two segments: 100 s to the last epoch line, then a resumed 50 s
    lines = [{"event": "start", "time": 1000.0}, {"event": "epoch", "time": 1060.0},
             {"event": "epoch", "time": 1100.0}, {"event": "start", "time": 5000.0},
             {"event": "epoch", "time": 5050.0}]
    assert ab.run_seconds(lines) == pytest.approx(150.0)
    data = tmp_path / "packs"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.beton").write_bytes(b"")
    args = ab.argparse.Namespace(data=data, out=tmp_path / "out", set=["epochs=3"], stage2_epochs=2,
                                 submissions=tmp_path / "subs", tag="")
    study = ab.Study(args)
    calls = []
    monkeypatch.setattr(study, "sh", _fake_fastvip(calls))
    results = {"chain": ab.measure(study, ab.CHAIN, "chain"), "deepblue": ab.measure(study, ab.DEEPBLUE, "deepblue")}
    runs = [c for c in calls if c[0] == "run"]
    ce = str(study.run_dir("tiny_vipriors_resnet18", 1) / "last.pt")
    triplet = next(c for c in runs if c[1].endswith("tiny_vipriors_resnet18_triplet.py"))
    assert "seed=0" in triplet and triplet[-1] == "epochs=2" and "epochs=3" in triplet
    assert sum(c[1].endswith("tiny_vipriors_resnet18_triplet.py") for c in runs) == 1  # one seed
    assert f"init_from={ce}" not in triplet and f"init_from={ce.replace('_s1', '_s0')}" in triplet
    # seed 0 of every row before any seed 1: each stage 2 runs while its CE model is in this session
    order = [(Path(c[1]).stem, next(x for x in c if x.startswith("seed="))) for c in runs]
    assert order.index(("tiny_vipriors_resnet18_arcface", "seed=0")) < order.index(("tiny_vipriors_resnet18", "seed=1"))
    assert order.index(("tiny_vipriors_cr", "seed=0")) < order.index(("tiny_vipriors_strong_baseline", "seed=1"))
    # the fusion row trains nothing: the auxiliary runs predicted with the framework's fusion weight
    assert not any(c[1].endswith("tiny_vipriors_framework.py") for c in runs)
    fused = [c for c in calls if c[0] == "predict" and "--fusion" in c]
    assert {c[1] for c in fused} == {str(study.run_dir("tiny_vipriors_aux", s)) for s in (0, 1)}
    assert all(c[c.index("--fusion") + 1] == "0.3" for c in fused)
    rows = {r["row"]: r for g in results.values() for r in g}
    assert set(rows["+ auxiliary fusion"]["top1"]) == {0, 1} and rows["+ auxiliary fusion"]["seconds"] is None
    assert rows["strong baseline"]["seconds"] == pytest.approx(120.0)  # two seeds x 60 s
    ens = rows["ensemble: CE, triplet, ArcFace"]
    assert ens["ref"] in ("CE", "stage 2 + triplet", "stage 2 + ArcFace") and 0 in ens["top1"]
    subs = ab.submissions(results)
    assert set(subs) == {"framework", "deepblueai_ensemble", "best_single"}
    assert all(Path(v).name.startswith("out_") and Path(v).exists() for v in subs.values())
    # every seed-0 run was predicted on test as it finished, so the best single row's file exists
    assert {p.name for p in (tmp_path / "subs").iterdir()} == {
        f"out_{r}.csv" for _, r, _, _ in ab.CHAIN + ab.DEEPBLUE if r != ab.FUSION_ROW} | {
        "out_framework.csv", "out_deepblueai_ensemble.csv"}
    calls.clear()
    assert study.train("tiny_vipriors_resnet18_triplet", 0) and calls == []  # done: nothing runs again
    # a new session's checkout: the committed ledger, no run directories; nothing is trained again
    # for a figure, and a model needed once more (the ensemble's members) is
    import shutil
    shutil.rmtree(study.out / "runs")
    again = ab.Study(args)
    monkeypatch.setattr(again, "sh", _fake_fastvip(calls))
    assert ab.measure(again, ab.CHAIN, "chain") == results["chain"] and calls == []
    ledger = json.loads((study.out / "ledger.json").read_text())
    assert all(e["machine"]["cores"] and "cpu_flags_sha1" in e["machine"] for e in ledger.values())
    del ledger["ensemble_s0"]
    (study.out / "ledger.json").write_text(json.dumps(ledger))
    again = ab.Study(args)
    monkeypatch.setattr(again, "sh", _fake_fastvip(calls))
    assert ab.complete(again, "chain") and not ab.complete(again, "deepblue")  # what main() shows untrained
    assert ab.measure(again, ab.DEEPBLUE, "deepblue")[:4] == results["deepblue"][:4]
    trained = [Path(c[1]).stem for c in calls if c[0] == "run"]
    assert trained == ["tiny_vipriors_resnet18", "tiny_vipriors_resnet18_triplet", "tiny_vipriors_resnet18_arcface"]
    assert ab.complete(again, "deepblue")
    assert "training it again" in (study.out / "log.txt").read_text()
    assert not any("--submission" in c and str(tmp_path / "subs") in " ".join(c) and c[0] == "predict"
                   for c in calls)  # the retrained members' kept submissions are not overwritten
    args.set = ["epochs=4"]  # another protocol in the same OUT is refused
    with pytest.raises(SystemExit, match="another protocol"):
        ab.Study(args)


def test_time_to_accuracy_x_baseline_only_at_no_less_accuracy():
    tta = _bench("time_to_accuracy")
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
    tta = _bench("time_to_accuracy")
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


def test_time_to_accuracy_moves_another_machines_entries_and_pack_times_aside(tmp_path):
    tta = _bench("time_to_accuracy")
    elsewhere = {"cpu": "elsewhere", "cores": 64, "cpu_flags_sha1": "0", "gpu": None, "torch": "0"}
    doc = tmp_path / "tta.json"
    doc.write_text(json.dumps({"machine": elsewhere, "pack_s": {"train": 1.0},
                               "entries": {"baseline": {"done": True, "wall_s": 10.0, "last_top1": 1.0}}}))
    args = SimpleNamespace(json=doc, work=tmp_path / "work")
    bench = tta.Bench(args)
    bench.save()
    saved = json.loads(doc.read_text())
    assert saved["entries"] == {} and "pack_s" not in saved and saved["machine"] == tta.machine()
    assert saved["other_machines"] == [{"machine": elsewhere, "pack_s": {"train": 1.0},
                                        "entries": {"baseline": {"done": True, "wall_s": 10.0, "last_top1": 1.0}}}]
    tta.Bench(args).save()  # the same machine again: nothing moves
    assert json.loads(doc.read_text())["other_machines"] == saved["other_machines"]


def test_gpu_check_without_a_gpu_reports_every_part_skipped(tmp_path, cpu_env):
    p = subprocess.run([sys.executable, "tools/gpu_check.py", "--out", str(tmp_path)], cwd=REPO, env=cpu_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(doc["parts"]) == ["correctness", "throughput", "jpeg", "memory"]
    assert all(r["status"] == "skipped" and r["reason"] == "no CUDA device" for r in doc["parts"].values())
    assert doc["machine"]["cuda"] is False and "| correctness | skipped |" in (tmp_path / "gpu_check.md").read_text()
    bad = subprocess.run([sys.executable, "tools/gpu_check.py", "--parts", "speed", "--out", str(tmp_path)],
                         cwd=REPO, env=cpu_env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "gpu_check: unknown part 'speed'; choose from correctness, throughput, jpeg, memory"]


def test_gpu_check_without_ffcv_writes_a_complete_summary_with_reasons(tmp_path, cpu_env):
    """The shell entry with ffcv unimportable (and no CUDA): every part is in the summary, skipped
    with its reason; on a GPU machine without ffcv, the parts that read packed files say why."""
    import importlib.util
    shim = tmp_path / "shim" / "ffcv"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('ffcv hidden by the test')\n")
    out = tmp_path / "out"
    env = {**cpu_env, "PYTHONPATH": str(tmp_path / "shim"), "PYTHON": sys.executable}
    p = subprocess.run(["bash", "tools/gpu_check.sh", "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["machine"]["ffcv"] is False and "hidden by the test" in doc["machine"]["ffcv_error"]
    assert list(doc["parts"]) == ["correctness", "throughput", "jpeg", "memory"]
    assert all(r["status"] == "skipped" and r["reason"] for r in doc["parts"].values())
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    have = {**doc["machine"], "cuda": True}  # what the device machine has without the kit
    for part in (gc.correctness, gc.throughput, gc.jpeg):
        r = part(have, tmp_path, 1.0)
        assert r["status"] == "skipped" and "ffcv is not importable (ffcv hidden by the test)" in r["reason"]


def test_throughput_times_the_step_with_each_count_of_teachers(tmp_path):
    import dataclasses

    from fastvip import recipe as recipe_mod
    from fastvip.errors import FastvipError
    tp = _bench("throughput")
    r = dataclasses.replace(recipe_mod.resolve(str(REPO / "recipes" / "tiny_vipriors_fast.py"), []),
                            model="test_resnet", image_size=16, batch_size=4, device="cpu", amp="off",
                            channels_last="off")
    rows = tp.teacher_rows(r, torch.device("cpu"), 10, steps=1, warmup=1, counts="0,1,3", folder=tmp_path)
    assert [x["step"] for x in rows] == ["teachers=0", "teachers=1", "teachers=3"]
    assert [x["teachers"] for x in rows] == [0, 1, 3]  # the built steps run that many teachers
    assert rows[0]["x_no_teachers"] == 1.0 and all(x["img_per_s"] > 0 for x in rows)
    for bad in ("3", "1,3", "0,1,1"):
        with pytest.raises(FastvipError, match="expects 0, then other distinct counts"):
            tp.teacher_rows(r, torch.device("cpu"), 10, steps=1, warmup=1, counts=bad, folder=tmp_path)
