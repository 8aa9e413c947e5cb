"""Time to accuracy on the tiny-vipriors proxy: the plain baseline against fastvip recipes, on one machine.

Each run is a separate process, started one after another (run nothing else meanwhile), and its
wall time counts from process start to exit: start-up, loading, training, every evaluation and
checkpoint. Every run trains on the train split only and is validated on all of val: the baseline
after every epoch, a recipe after every ``eval_every``-th epoch and the last (the curve's other
epochs have ``top1`` None). The baseline is ``benchmarks/baseline_torchvision.py`` unchanged (timm ResNet-18 at 64 px,
SGD Nesterov, one warm-up epoch then cosine, label smoothing 0.1), 30 epochs. fastvip's one-time
``pack`` of the splits, paid once per dataset, is timed and reported beside the runs, not in them.

    fastvip split tiny-imagenet-200 data/tiny-vipriors-src --per-class 50 --seed 0 \\
        --test-labels data/tiny-vipriors-test-labels.csv
    python benchmarks/time_to_accuracy.py --src data/tiny-vipriors-src --data data/tiny-vipriors \\
        --runs baseline,tiny_vipriors_fast

Results go to ``--json`` (default ``benchmarks/time_to_accuracy.json``), one entry per run:
``command`` (to rerun it from the repository root: paths inside the repository are recorded
relative to it), ``wall_s``, ``epochs``, ``last_top1`` (the last epoch's top-1 of the weights the recipe ships:
EMA when it keeps an EMA or a Mean Teacher, raw otherwise; fixed by the recipe, never the better of
the two), the per-epoch curve, and for fastvip runs ``x_baseline`` = baseline ``wall_s`` / this
run's ``wall_s``, set only when ``last_top1`` is at least the baseline's (``wall_ratio`` always
holds the plain ratio). ``machine`` names the CPU (model, cores, native bf16) or GPU and torch; a
baseline entry made on the same machine is reused, and says so. The curves of every run go to
``--plot`` (val top-1 against wall time).

A run the session ended before it finished continues with the same command: ``fastvip run --resume``
picks it up from its last checkpoint, and its ``wall_s`` is the sum of its segments, each counted up
to the last epoch it checkpointed (the work after that is redone, and counted, in the next one).
``--submissions DIR`` also predicts ``DATA/test.beton`` with each finished run's last-epoch shipped
weights into ``DIR/<run>.csv`` (not timed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "baseline"
BASELINE_EPOCHS = 30


def logged(cmd: list, log: Path) -> int:
    """Run ``cmd`` with its output appended to ``log`` after a ``$ command`` line; its exit code.
    The benchmarks' one way to call ``fastvip``: ``python -m fastvip`` is logged as ``fastvip``."""
    cmd = [str(c) for c in cmd]
    shown = cmd[2:] if cmd[:3] == [sys.executable, "-m", "fastvip"] else cmd
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(shown) + "\n")
        fh.flush()
        return subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode


def repo_relative(arg) -> str:
    """A command-line argument as the JSON records it: a path inside the repository (alone, as a
    ``key=value`` value, or in a comma-separated list) relative to the repository root, where the
    runs start, so that the command reruns from a checkout anywhere; anything else as it is."""
    text = str(arg)
    key, sep, value = text.partition("=")
    if sep and key.isidentifier():
        return f"{key}={repo_relative(value)}"
    parts = []
    for part in text.split(","):
        path = Path(part)
        if path.is_absolute():
            try:
                part = path.relative_to(REPO).as_posix() or "."
            except ValueError:
                pass  # outside the repository: only this machine has it
        parts.append(part)
    return ",".join(parts)


def shown_command(cmd: list) -> str:
    return " ".join(repo_relative(c) for c in cmd)


def machine() -> dict:
    """What a time is only comparable on: the CPU (model, cores, flags) or GPU, and torch."""
    import torch
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "native_bf16": False,
            "cpu_flags_sha1": None, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    info.update(cpu=fields.get("model name", info["cpu"]),
                native_bf16=bool({"avx512_bf16", "amx_bf16"} & set(flags)),
                cpu_flags_sha1=hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:12])
    return info


MACHINE_KEYS = ("cpu", "cores", "cpu_flags_sha1", "gpu", "torch")  # what a time is comparable on


def same_machine(a: dict | None, b: dict) -> bool:
    return bool(a) and all(a.get(k) == b.get(k) for k in MACHINE_KEYS)


def shipped_weights(recipe: dict) -> str:
    """``ema`` or ``raw``: the weights a recipe ships, known before it runs."""
    from fastvip.recipe import from_dict
    return from_dict(recipe).shipped_weights()


def score_entries(entries: dict) -> dict:
    """Add ``wall_ratio`` and ``x_baseline`` (valid only at no less accuracy) to every finished fastvip entry."""
    base = entries.get(BASELINE)
    for name, e in entries.items():
        if name == BASELINE or not e.get("done"):
            continue
        if not base or not base.get("done"):
            e.update(wall_ratio=None, x_baseline=None, x_baseline_valid=False)
            continue
        ratio = base["wall_s"] / e["wall_s"]
        valid = e["last_top1"] >= base["last_top1"]
        e.update(wall_ratio=round(ratio, 3), x_baseline=round(ratio, 3) if valid else None, x_baseline_valid=valid)
    return entries


def segment_seconds(segments: list[dict], epoch_times: list[float]) -> list[float]:
    """Seconds each segment counts: start to exit, or, for one cut off (no ``end``), to its last epoch line."""
    out = []
    for i, seg in enumerate(segments):
        if seg.get("end") is not None:
            out.append(seg["end"] - seg["start"])
            continue
        until = segments[i + 1]["start"] if i + 1 < len(segments) else float("inf")
        inside = [t for t in epoch_times if seg["start"] <= t < until]
        out.append(max(inside) - seg["start"] if inside else 0.0)
    return out


def curve(segments: list[dict], epochs: list[dict], weights: str) -> list[dict]:
    """Per epoch: cumulative wall seconds (over counted segments) and the shipped weights' val top-1."""
    counted = segment_seconds(segments, [e["time"] for e in epochs])
    out = []
    for e in epochs:
        i = max(j for j, s in enumerate(segments) if s["start"] <= e["time"])
        key = "val_top1_ema" if weights == "ema" else "val_top1"
        out.append({"epoch": e["epoch"], "wall_s": round(sum(counted[:i]) + e["time"] - segments[i]["start"], 2),
                    "top1": e.get(key), "val_n": e.get("val_n")})
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.path: Path = args.json
        self.doc = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.doc.setdefault("entries", {})
        self.machine = machine()
        if self.doc.get("machine") and not same_machine(self.doc["machine"], self.machine):
            # entries timed elsewhere are not comparable: keep them aside, start this machine's table
            aside = {"machine": self.doc["machine"], "entries": self.doc["entries"]}
            if "pack_s" in self.doc:  # packing times are the machine's too
                aside["pack_s"] = self.doc.pop("pack_s")
            self.doc.setdefault("other_machines", []).append(aside)
            self.doc["entries"] = {}
        self.doc["machine"] = self.machine
        args.work.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        score_entries(self.doc["entries"])
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.path)

    def pack(self) -> None:
        """Pack the splits once (timed, reported apart: paid once per dataset)."""
        data, src = self.args.data, self.args.src
        for split in ("train", "val", "test"):
            out = data / f"{split}.beton"
            if out.exists() or (split == "test" and not (src and (src / split).is_dir())):
                continue
            if not (src and (src / split).is_dir()):
                sys.exit(f"error: {out} does not exist and --src has no {split}/ to pack it from")
            data.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            if logged([sys.executable, "-m", "fastvip", "pack", src / split, out, "--quiet"],
                       self.args.work / "pack.log"):
                sys.exit(f"error: packing {src / split} failed; see {self.args.work / 'pack.log'}")
            self.doc.setdefault("pack_s", {})[split] = round(time.time() - t0, 2)
            self.save()

    def baseline(self) -> None:
        e = self.doc["entries"].get(BASELINE)
        if e and e.get("done"):
            print(f"{BASELINE}: reused from {e['date']} (same machine)")
            e.setdefault("reused_on", []).append(time.strftime("%Y-%m-%d %H:%M"))
            self.save()
            return
        if not (self.args.src and (self.args.src / "train").is_dir()):
            sys.exit("error: the baseline reads image folders: give --src (train/, val/ class folders)")
        out = self.args.work / "baseline.json"
        cmd = [sys.executable, REPO / "benchmarks" / "baseline_torchvision.py", "--data", self.args.src,
               "--epochs", self.args.baseline_epochs, "--json", out]
        out.unlink(missing_ok=True)
        start = time.time()
        rc = logged(cmd, self.args.work / "baseline.log")
        end = time.time()
        if rc:
            sys.exit(f"error: the baseline failed ({rc}); see {self.args.work / 'baseline.log'}")
        r = json.loads(out.read_text())
        self.doc["entries"][BASELINE] = {
            "baseline": "benchmarks/baseline_torchvision.py", "command": shown_command(cmd[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(start)), "done": True,
            "wall_s": round(end - start, 2), "epochs": r["epochs"], "weights": "raw", "last_top1": r["val_top1"],
            "curve": [{"epoch": i + 1, "wall_s": round(t - start, 2), "top1": top1, "val_n": r.get("val_n")}
                      for i, (top1, t) in enumerate(zip(r["val_top1_per_epoch"], r["epoch_end_time"]))]}
        self.save()

    def recipe(self, spec: str) -> None:
        recipe = Path(spec) if spec.endswith(".py") else REPO / "recipes" / f"{spec}.py"
        name, entries = recipe.stem, self.doc["entries"]
        e = entries.get(name)
        if e and e.get("done"):
            print(f"{name}: done ({e['last_top1']:.2f}% in {e['wall_s']:.0f} s)")
            return
        run_dir = self.args.work / name
        sets = [f"train_data={self.args.data / 'train.beton'}", f"val_data={self.args.data / 'val.beton'}",
                *self.args.set]
        resume = bool(e) and (run_dir / "last.pt").exists()
        if not resume:
            if run_dir.exists() and any(run_dir.iterdir()):
                sys.exit(f"error: {run_dir} holds a run this table has no record of; remove it or pick --work")
            e = entries[name] = {"recipe": os.path.relpath(recipe.resolve(), REPO), "segments": [], "done": False,
                                 "date": time.strftime("%Y-%m-%d %H:%M")}
        cmd = [sys.executable, "-m", "fastvip", "run", recipe, "--out", run_dir, "--set", *sets] + (
            ["--resume"] if resume else [])
        e["command"] = "fastvip run " + shown_command(cmd[4:])
        e["segments"].append({"start": time.time(), "end": None})
        self.save()
        rc = logged(cmd, self.args.work / f"{name}.log")
        e["segments"][-1]["end"] = time.time()
        if rc:
            self.save()
            sys.exit(f"error: {name} failed ({rc}); see {self.args.work / f'{name}.log'}")
        from fastvip.train import metrics
        lines = metrics.read(run_dir / "metrics.jsonl")
        epochs = [x for x in lines if x.get("event") == "epoch"]
        rdict = json.loads((run_dir / "recipe.json").read_text())
        weights = shipped_weights(rdict)
        e.update(done=True, epochs=len(epochs), weights=weights,
                 curve=curve(e["segments"], epochs, weights))
        e["wall_s"] = round(sum(segment_seconds(e["segments"], [x["time"] for x in epochs])), 2)
        e["last_top1"] = e["curve"][-1]["top1"]
        self.save()
        if self.args.submissions:
            self.args.submissions.mkdir(parents=True, exist_ok=True)
            sub = self.args.submissions / f"{name}.csv"
            if logged([sys.executable, "-m", "fastvip", "predict", run_dir, self.args.data / "test.beton",
                        "--weights", "last", "--submission", sub], self.args.work / f"{name}.log"):
                sys.exit(f"error: predicting {name} failed; see {self.args.work / f'{name}.log'}")
            e["submission"] = os.path.relpath(sub, REPO)
            self.save()

    def plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, e in self.doc["entries"].items():
            pts = [(p["wall_s"] / 60, p["top1"]) for p in e.get("curve", []) if p["top1"] is not None]
            if pts:
                label = f"{name}: {e['last_top1']:.2f}% in {e['wall_s'] / 60:.1f} min" if e.get("done") else name
                ax.plot(*zip(*pts), marker=".", label=label, color="black" if name == BASELINE else None)
        ax.set(xlabel="wall time (min, process start to exit)", ylabel="val top-1 (%)",
               title=f"tiny-vipriors, {self.machine['gpu'] or self.machine['cpu']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = self.args.plot.with_name(f".{self.args.plot.stem}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, self.args.plot)
        plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder of train.beton, val.beton (test.beton)")
    ap.add_argument("--src", type=Path, default=None,
                    help="the split as image folders (train/, val/, test/): the baseline reads them, and "
                         "missing .beton files are packed from them")
    ap.add_argument("--runs", default=f"{BASELINE},tiny_vipriors_fast",
                    help=f"comma-separated: {BASELINE} and recipe names under recipes/ (or recipe paths)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    ap.add_argument("--baseline-epochs", type=int, default=BASELINE_EPOCHS)
    ap.add_argument("--work", type=Path, default=Path("tta_runs"), help="run directories and logs")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "time_to_accuracy.json")
    ap.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "time_to_accuracy.png")
    ap.add_argument("--submissions", type=Path, default=None, help="write DIR/<run>.csv for DATA/test.beton")
    args = ap.parse_args(argv)
    args.data, args.work, args.json = args.data.resolve(), args.work.resolve(), args.json.resolve()
    args.src = args.src.resolve() if args.src else None
    bench = Bench(args)
    bench.pack()
    for name in [n.strip() for n in args.runs.split(",") if n.strip()]:
        bench.baseline() if name == BASELINE else bench.recipe(name)
        bench.plot()
    for name, e in bench.doc["entries"].items():
        if e.get("done"):
            x = e.get("x_baseline")
            print(f"{name:<28} {e['last_top1']:6.2f}%  {e['wall_s']:8.0f} s  {e['epochs']:3d} epochs"
                  + (f"  x_baseline {x:.2f}" if x else ("  (below the baseline)" if name != BASELINE else "")))
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
