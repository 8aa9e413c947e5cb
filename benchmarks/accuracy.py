"""Accuracy benchmark on the tiny-vipriors proxy: fastvip's models, their ensemble, and the obvious baseline.

Runs, through the real command line, end to end:

1. ``fastvip pack`` of ``DATA/{train,val,test}`` into ``OUT`` (skipped when the packs exist,
   or given with ``--packs``);
2. ``fastvip run`` of each recipe (``--models``; default: the CE proxy recipe, its
   triplet and ArcFace stage-2 runs, and the 2021 framework), validated on val;
3. ``fastvip predict --weights last`` of val (probabilities) and test (a submission CSV):
   the last epoch's weights of the kind each recipe declares it ships (EMA when it keeps
   one, else raw), so no figure is chosen on val;
4. ``fastvip ensemble`` of the models' probabilities (val top-1 and a test submission);
5. ``benchmarks/baseline_torchvision.py`` (ImageFolder + DataLoader + timm ResNet-18 +
   SGD / cosine) given the wall time of the CE recipe's run.

Results go to ``OUT/accuracy.json`` and a markdown table on stdout; submissions to
``--submissions`` (default ``benchmarks/submissions``). Every run directory is kept
under ``OUT/runs``, so an interrupted benchmark resumes where it stopped.

The data is the tiny-vipriors proxy rebuilt from Tiny ImageNet (``tiny-imagenet-200``, the
CS231n archive) by ``fastvip split``, packed where the proxy recipes look for it::

    fastvip split tiny-imagenet-200 data/tiny-vipriors-src --per-class 50 --seed 0 \\
        --test-labels data/tiny-vipriors-test-labels.csv
    mkdir -p data/tiny-vipriors
    for s in train val test; do fastvip pack data/tiny-vipriors-src/$s data/tiny-vipriors/$s.beton; done
    python benchmarks/accuracy.py --data data/tiny-vipriors-src --packs data/tiny-vipriors --out bench_acc

``DATA`` (the JPEG folders) is still read by the torchvision baseline. Score a test submission
with ``fastvip score benchmarks/submissions/NAME.csv data/tiny-vipriors-test-labels.csv``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["tiny_vipriors_resnet18", "tiny_vipriors_resnet18_triplet", "tiny_vipriors_resnet18_arcface",
                  "tiny_vipriors_framework"]


def sh(cmd: list, log: Path) -> None:
    """Run a command, its output appended to ``log``; stop the benchmark when it fails."""
    from time_to_accuracy import logged
    rc = logged(cmd, log)
    if rc:
        sys.exit(f"failed ({rc}): {' '.join(map(str, cmd))}; see {log}")


def fastvip(*args) -> list:
    return [sys.executable, "-m", "fastvip", *args]


def last_epoch(run_dir: Path) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["event"] == "epoch"][-1]


def reported(run_dir: Path) -> dict:
    """The last epoch's val top-1 of the declared weights (the figure compared), and the
    best-of-every-epoch figure (selected on val, shown apart)."""
    sys.path.insert(0, str(REPO))
    from fastvip.recipe import from_dict
    e = last_epoch(run_dir)
    best = json.loads((run_dir / "best.json").read_text())
    weights = from_dict(json.loads((run_dir / "recipe.json").read_text())).shipped_weights()
    # runs written before best.json carried the last epoch's figures: read them off its line
    last = best.get("last_top1", e.get("val_top1_ema" if weights == "ema" else "val_top1"))
    return {"val_top1": last, "weights": weights, "epoch": e["epoch"], "best_val_top1": best["top1"],
            "best_weights": best["weights"], "best_epoch": best["epoch"], "img_per_s": e.get("img_per_s")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "tiny-vipriors-src",
                    help="the split's JPEG folders DATA/{train,val,test} (default: data/tiny-vipriors-src)")
    ap.add_argument("--packs", type=Path, default=None, metavar="DIR",
                    help="use DIR/{train,val,test}.beton (e.g. data/tiny-vipriors) instead of packing DATA into OUT")
    ap.add_argument("--out", type=Path, default=Path("bench_acc"))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="recipe names under recipes/")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    ap.add_argument("--epochs", default="", metavar="NAME=N,...", help="per-recipe epochs (fits a CPU budget)")
    ap.add_argument("--submissions", type=Path, default=REPO / "benchmarks" / "submissions")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--tag", default="", help="suffix of the submission file names")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    args.submissions.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    packs = {}
    for split in ("train", "val", "test"):
        if args.packs is not None:  # resolved: the commands run from the repository root
            packs[split] = args.packs.resolve() / f"{split}.beton"
            if not packs[split].is_file():
                sys.exit(f"--packs: no {packs[split]} (pack DATA/{split} there, or drop --packs)")
            continue
        packs[split] = out / f"{split}.beton"
        if not packs[split].exists():
            sh(fastvip("pack", args.data / split, packs[split], "--quiet"), log)
    models = [m for m in args.models.split(",") if m]
    results = json.loads((out / "accuracy.json").read_text()) if (out / "accuracy.json").exists() else {}
    tag = f"_{args.tag}" if args.tag else ""
    for name in models:
        run_dir = out / "runs" / name
        recipe = REPO / "recipes" / f"{name}.py"
        sets = [f"train_data={packs['train']}", f"val_data={packs['val']}", *args.set]
        epochs = dict(item.split("=") for item in args.epochs.split(",") if item)
        if name in epochs:
            sets.append(f"epochs={epochs[name]}")
        text = recipe.read_text()
        if "init_from=" in text:  # stage 2: the CE run of this benchmark
            base = text.split('init_recipe="recipes/')[1].split(".py")[0]
            sets.append(f"init_from={out / 'runs' / base}")
        if not (run_dir / "done").exists():
            t0 = time.time()
            resume = ["--resume"] if (run_dir / "last.pt").exists() else []
            sh(fastvip("run", recipe, "--out", run_dir, "--quiet", *resume, "--set", *sets), log)
            (run_dir / "done").write_text(f"{time.time() - t0:.1f}\n")
        wall = float((run_dir / "done").read_text())
        probs = run_dir / "predictions" / "val_probs.npz"
        if not probs.exists():
            sh(fastvip("predict", run_dir, packs["val"], "--weights", "last", "--out", probs, "--quiet"), log)
        sub = args.submissions / f"{name}{tag}.csv"
        if not sub.exists():
            sh(fastvip("predict", run_dir, packs["test"], "--weights", "last", "--out",
                       run_dir / "predictions" / "test_probs.npz", "--submission", sub, "--quiet"), log)
        results[name] = {**reported(run_dir), "wall_s": wall,
                         "submission": str(sub.relative_to(REPO)) if sub.is_relative_to(REPO) else str(sub)}
        (out / "accuracy.json").write_text(json.dumps(results, indent=2))

    if len(models) > 1:
        ens_val = out / "ensemble_val.npz"
        sh(fastvip("ensemble", *[out / "runs" / m / "predictions" / "val_probs.npz" for m in models],
                   "--out", ens_val, "--submission", out / "ensemble_val.csv", "--quiet"), log)
        labels = out / "val_labels.csv"
        _labels_csv(packs["val"], labels)
        top1 = _score(out / "ensemble_val.csv", labels)
        sub = args.submissions / f"tiny_vipriors_ensemble{tag}.csv"
        sh(fastvip("ensemble", *[out / "runs" / m / "predictions" / "test_probs.npz" for m in models],
                   "--submission", sub, "--quiet"), log)
        results["ensemble"] = {"val_top1": top1, "members": models, "submission": str(sub.relative_to(REPO))}

    if args.baseline and models:
        budget = results[models[0]]["wall_s"] / 60
        bjson = out / "baseline.json"
        if not bjson.exists():
            sh([sys.executable, REPO / "benchmarks" / "baseline_torchvision.py", "--data", args.data,
                "--minutes", f"{budget:.2f}", "--json", bjson,
                "--submission", args.submissions / f"tiny_vipriors_baseline_torchvision{tag}.csv"], log)
        results["baseline_torchvision"] = json.loads(bjson.read_text())
    (out / "accuracy.json").write_text(json.dumps(results, indent=2))
    print("| model | val top-1 (last epoch, declared weights) | best epoch on val (not compared) | wall (min) |\n"
          "|---|---|---|---|")
    for name, r in results.items():
        wall = f"{r['wall_s'] / 60:.1f}" if r.get("wall_s") else "-"
        best = f"{r['best_val_top1']:.2f} % ({r['best_weights']}, epoch {r['best_epoch']})" \
            if r.get("best_val_top1") is not None else "-"
        print(f"| {name} | {r['val_top1']:.2f} %{' (' + r['weights'] + ')' if 'weights' in r else ''} | {best} | {wall} |")
    return 0


def _labels_csv(packed: Path, path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from fastvip.data.packed import open_packed
    from fastvip.infer.predict import write_submission
    p = open_packed(packed)
    write_submission(path, p.ids, [int(x) for x in p.labels])


def _score(sub: Path, labels: Path) -> float:
    sys.path.insert(0, str(REPO))
    from fastvip.infer.predict import score
    return score(sub, labels)["top1"]


if __name__ == "__main__":
    sys.exit(main())
