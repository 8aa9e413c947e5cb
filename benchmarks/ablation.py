"""Each technique's effect on the tiny-vipriors proxy, one row at a time (issue #23).

Two tables, every run through the real command line (``fastvip run``, ``predict``, ``ensemble``):

- **2021 chain** (Attract-and-Repulse, Table 3): strong baseline -> + two views -> + SCE ->
  + Mean Teacher -> + CR -> + auxiliary classifier -> + auxiliary fusion. Each recipe imports
  the one above and adds one technique; the fusion row trains nothing: it is the auxiliary
  row's runs predicted with the framework recipe's ``fusion_weight`` (``predict --fusion``).
- **DeepBlueAI**: CE -> stage 2 with CE only for the stage-2 length (the control) -> stage 2
  with batch-hard triplet -> stage 2 with ArcFace (each stage 2 from the CE run of its seed)
  -> the probability ensemble of CE, triplet and ArcFace, against its best member.

The protocol is the same for every row: the recipes as written plus ``--set`` (the schedule:
one length for every first-stage run) and ``--stage2-epochs``; the train split; the last
epoch's weights of the kind each recipe declares (``predict --weights last`` on all 10,000
val images; no choice made on val). Seeds: two for the strong baseline, the auxiliary row
(so the full framework, its fusion, has two) and CE; one elsewhere.

Each row shows its top-1 per seed, the change from the row it is compared with (over the
seeds both have), the binomial standard error of that change on n val images, the seed spread
where there are two, and whether the change is signal: at least twice its standard error and,
where a row has two seeds, larger than their spread. Results: ``OUT/ablation.json`` and
``OUT/ablation.md``, with every table ``--rows`` trains and any other already whole in the
ledger; test submissions of the full framework, the DeepBlueAI ensemble and the best single
row in ``--submissions`` as ``<tag>_*.csv``. One OUT holds one protocol
(``protocol.json``). The study spans sessions: every finished run's figures go at once to
``OUT/ledger.json`` (committed with ``protocol.json``; the run directories under ``OUT/runs/``
are not), and a run in the ledger is never trained again for its figure. Interrupted, the same
command resumes an unfinished run (``fastvip run --resume``) where its directory is left; a model
needed after its directory is gone (a stage 2's CE start, an ensemble member's probabilities) is
trained again, and the log says so. Each seed-0 run's test submission is written as soon as it
finishes, so the best single row's exists whichever it turns out to be::

    python benchmarks/ablation.py --data data/tiny-vipriors --out benchmarks/ablation \\
        --set epochs=60 eval_every=10 --stage2-epochs 15

It first trains CE and the strong baseline (seed 0) and stops unless the strong baseline leads
by ``--min-gap`` points (3 by default): a schedule too short for the regularisers to pay would
make every row after it uninformative.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# (row, recipe under recipes/, seeds, the row its change is measured from); plain data, in order
CHAIN = [
    ("strong baseline", "tiny_vipriors_strong_baseline", (0, 1), None),
    ("+ two views", "tiny_vipriors_two_views", (0,), "strong baseline"),
    ("+ SCE", "tiny_vipriors_sce", (0,), "+ two views"),
    ("+ Mean Teacher", "tiny_vipriors_mt", (0,), "+ SCE"),
    ("+ CR", "tiny_vipriors_cr", (0,), "+ Mean Teacher"),
    ("+ auxiliary classifier", "tiny_vipriors_aux", (0, 1), "+ CR"),
    ("+ auxiliary fusion", "tiny_vipriors_framework", (0, 1), "+ auxiliary classifier"),
]
DEEPBLUE = [
    ("CE", "tiny_vipriors_resnet18", (0, 1), None),
    ("stage 2, CE only (control)", "tiny_vipriors_resnet18_stage2", (0,), "CE"),
    ("stage 2 + triplet", "tiny_vipriors_resnet18_triplet", (0,), "stage 2, CE only (control)"),
    ("stage 2 + ArcFace", "tiny_vipriors_resnet18_arcface", (0,), "stage 2, CE only (control)"),
]
FUSION_ROW, FUSED_FROM = "tiny_vipriors_framework", "tiny_vipriors_aux"  # inference only
ENSEMBLE = ("ensemble: CE, triplet, ArcFace", ("CE", "stage 2 + triplet", "stage 2 + ArcFace"))
GROUPS = {"chain": CHAIN, "deepblue": DEEPBLUE}


# ------------------------------------------------------------------ the table (pure functions)

def binomial_se(top1: float, n: int) -> float:
    """Standard error, in points, of a top-1 of ``top1`` % measured on ``n`` images."""
    p = top1 / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def compare(row: dict, ref: dict, n: int) -> dict:
    """``row``'s change from ``ref`` over the seeds both have ({seed: top-1} in ``top1``), its
    binomial standard error, and whether it is signal (>= 2 SE and beyond either seed spread)."""
    common = sorted(set(row["top1"]) & set(ref["top1"]))
    if not common:
        return {"change": None, "se": None, "signal": None, "seeds": []}
    a = sum(row["top1"][s] for s in common) / len(common)
    b = sum(ref["top1"][s] for s in common) / len(common)
    # every seed is scored on the same val images, so averaging seeds does not shrink this error;
    # the two rows' errors are correlated (same images), which makes the sum below conservative
    se = math.sqrt(binomial_se(a, n) ** 2 + binomial_se(b, n) ** 2)
    change = a - b
    spreads = [spread(x) for x in (row, ref) if spread(x) is not None]
    signal = abs(change) > 0 and abs(change) >= 2 * se and all(abs(change) > s for s in spreads)
    return {"change": change, "se": se, "signal": signal, "seeds": common}


def spread(row: dict) -> float | None:
    """Largest minus smallest top-1 over a row's seeds (None with one seed)."""
    values = list(row["top1"].values())
    return max(values) - min(values) if len(values) > 1 else None


def mean(row: dict) -> float:
    return sum(row["top1"].values()) / len(row["top1"])


def table(title: str, rows: list[dict], n: int) -> str:
    """Markdown: row, recipe, top-1 per seed and mean, change from its reference row, SE, spread, verdict."""
    by_name = {r["row"]: r for r in rows}
    out = [f"**{title}**", "",
           "| row | recipe | top-1 per seed | mean | compared with | change | SE of change | seed spread "
           "| signal? | machine time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"s{s}: {v:.2f}" for s, v in sorted(r["top1"].items()))
        ref = by_name.get(r.get("ref"))
        c = compare(r, ref, n) if ref else {"change": None}
        cells = ["", "", "", ""] if c["change"] is None else [
            f"{ref['row']} (seed{'s' if len(c['seeds']) > 1 else ''} {', '.join(map(str, c['seeds']))})",
            f"{c['change']:+.2f}", f"{c['se']:.2f}", ""]
        s = spread(r)
        cells[3] = f"{s:.2f}" if s is not None else ""
        verdict = "" if c["change"] is None else ("signal" if c["signal"] else "within noise")
        minutes = "inference only" if r.get("seconds") is None else f"{r['seconds'] / 60:.0f} min"
        out.append(f"| {r['row']} | `{r['recipe']}` | {seeds} | {mean(r):.2f} | {cells[0]} | {cells[1]} | "
                   f"{cells[2]} | {cells[3]} | {verdict} | {minutes} |")
    return "\n".join(out)


def run_seconds(lines: list[dict]) -> float:
    """A run's machine time from its metrics.jsonl: each segment (a ``start`` line) to its last line."""
    total, start, last = 0.0, None, None
    for line in lines:
        if line.get("event") == "start":
            if start is not None and last is not None:
                total += last - start
            start, last = line["time"], line["time"]
        elif start is not None and "time" in line:
            last = line["time"]
    if start is not None and last is not None:
        total += last - start
    return total


# ------------------------------------------------------------------ running it

class Study:
    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()
        self.subs = args.submissions.resolve()  # the commands run from the repository root
        self.tag = args.tag or self.out.name
        self.log = self.out / "log.txt"
        self.packs = {s: (args.data / f"{s}.beton").resolve() for s in ("train", "val", "test")}
        for split, path in self.packs.items():
            if not path.is_file():
                sys.exit(f"error: no {path}; pack the proxy's {split} split there (fastvip pack)")
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        self.subs.mkdir(parents=True, exist_ok=True)
        # finished runs are reused, so one OUT holds one protocol
        protocol = {"set": list(args.set), "stage2_epochs": args.stage2_epochs}
        saved = self.out / "protocol.json"
        if saved.exists() and json.loads(saved.read_text()) != protocol:
            sys.exit(f"error: {self.out} holds runs of another protocol ({saved.read_text().strip()}); "
                     "use a new --out")
        from fastvip import atomic
        atomic.write_json(saved, protocol)
        from time_to_accuracy import MACHINE_KEYS, machine  # the study spans sessions, and so machines
        m = machine()
        self.machine = {k: m[k] for k in MACHINE_KEYS}
        self.ledger_path = self.out / "ledger.json"
        self.ledger = json.loads(self.ledger_path.read_text()) if self.ledger_path.exists() else {}

    def sh(self, *args) -> None:
        """``fastvip *args``, logged; the study stops if it fails."""
        from time_to_accuracy import logged
        rc = logged([sys.executable, "-m", "fastvip", *args], self.log)
        if rc:
            sys.exit(f"error: fastvip {' '.join(map(str, args[:3]))} ... failed ({rc}); see {self.log}")

    def note(self, text: str) -> None:
        print(text)
        with open(self.log, "a") as fh:
            fh.write(f"# {text}\n")

    def record(self, name: str, entry: dict) -> dict:
        """Add one finished result to the ledger (written at once: a session may end any time)."""
        from fastvip import atomic
        self.ledger[name] = dict(entry, date=time.strftime("%Y-%m-%d %H:%M"), machine=self.machine)
        atomic.write_json(self.ledger_path, self.ledger)
        return self.ledger[name]

    def run_dir(self, recipe: str, seed: int) -> Path:
        return self.out / "runs" / key(recipe, seed)

    def train(self, recipe: str, seed: int) -> Path:
        """A trained model of the protocol (resumed where a checkpoint is left); returns its directory."""
        from fastvip.recipe import load_recipe
        d = self.run_dir(recipe, seed)
        if (d / "done").exists():
            return d
        if key(recipe, seed) in self.ledger:
            self.note(f"{recipe} seed {seed}: its directory is gone; training it again for its model "
                      "(the ledger keeps its first figures)")
        path = REPO / "recipes" / f"{recipe}.py"
        sets = [*self.args.set, f"train_data={self.packs['train']}", f"val_data={self.packs['val']}",
                f"seed={seed}"]
        if load_recipe(path).init_from:  # stage 2: from the CE run of the same seed (its last epoch's
            # declared weights, as the CE row is scored), for its own length
            sets += [f"init_from={self.train(DEEPBLUE[0][1], seed) / 'last.pt'}", f"epochs={self.args.stage2_epochs}"]
        resume = ["--resume"] if (d / "last.pt").exists() else []
        self.sh("run", path, "--out", d, "--quiet", *resume, "--set", *sets)
        d.mkdir(parents=True, exist_ok=True)
        (d / "done").write_text("")
        return d

    def score(self, recipe: str, seed: int) -> dict:
        """A row's figures for one seed: from the ledger, or trained, scored on val and (seed 0)
        predicted on test now, while its model is here. The auxiliary row's runs also score the
        fusion row (the same model, fused) at once."""
        k = key(recipe, seed)
        if k in self.ledger:
            return self.ledger[k]
        if recipe == FUSION_ROW:  # inference only: the auxiliary row's model, fused
            run, fusion, seconds = self.train(FUSED_FROM, seed), fusion_weight(), None
        else:
            from fastvip.train.metrics import read
            run, fusion = self.train(recipe, seed), None
            seconds = run_seconds(read(run / "metrics.jsonl"))
        acc, n = top1(self.val_probs(run, fusion))
        sub = self.test_submission(run, "framework" if fusion else recipe, fusion)[0] if seed == 0 else None
        entry = self.record(k, {"top1": acc, "n": n, "seconds": seconds, "submission": sub})
        if recipe == FUSED_FROM:
            self.score(FUSION_ROW, seed)
        return entry

    def val_probs(self, run: Path, fusion: float | None = None) -> Path:
        """The last epoch's declared weights on val (and with ``fusion``, the auxiliary head fused)."""
        out = run / "predictions" / ("val.npz" if fusion is None else f"val_fusion{fusion:g}.npz")
        if not out.exists():
            extra = [] if fusion is None else ["--fusion", fusion]
            self.sh("predict", run, self.packs["val"], "--weights", "last", "--out", out, "--quiet", *extra)
        return out

    def test_submission(self, run: Path, name: str, fusion: float | None = None) -> tuple[str, Path]:
        """``--submissions/<tag>_<name>.csv`` and the test probabilities beside the run."""
        sub = self.subs / f"{self.tag}_{name}.csv"
        probs = run / "predictions" / f"test{'' if fusion is None else '_fusion'}.npz"
        if not probs.exists():
            extra = [] if fusion is None else ["--fusion", fusion]
            # a kept submission is never overwritten: a model trained again only supplies probabilities
            extra += [] if sub.exists() else ["--submission", sub]
            self.sh("predict", run, self.packs["test"], "--weights", "last", "--out", probs, "--quiet", *extra)
        return shown(sub), probs


def key(recipe: str, seed: int) -> str:
    """One run's name: its ledger key and its directory under OUT/runs/."""
    return f"{recipe}_s{seed}"


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def top1(npz: Path) -> tuple[float, int]:
    """Top-1 (%) of a probabilities file against the labels it carries, and its image count."""
    from fastvip.infer.predict import load_probs
    z = load_probs(npz)
    return 100.0 * float((z["probs"].argmax(1) == z["labels"]).mean()), len(z["ids"])


def fusion_weight() -> float:
    from fastvip.recipe import load_recipe
    return load_recipe(REPO / "recipes" / f"{FUSION_ROW}.py").fusion_weight


def ensemble(study: Study) -> dict:
    """The DeepBlueAI ensemble (seed 0): val top-1 and test submission, from its members'
    probabilities (members whose directories are gone are trained again)."""
    if key("ensemble", 0) in study.ledger:
        return study.ledger[key("ensemble", 0)]
    members = {name: recipe for name, recipe, _, _ in DEEPBLUE if name in ENSEMBLE[1]}
    runs = [study.train(members[m], 0) for m in ENSEMBLE[1]]
    val = study.out / "runs" / "ensemble_val.npz"
    study.sh("ensemble", *[study.val_probs(r) for r in runs], "--out", val,
             "--submission", val.with_suffix(".csv"), "--quiet")
    sub = study.subs / f"{study.tag}_deepblueai_ensemble.csv"
    tests = [study.test_submission(r, members[m])[1] for r, m in zip(runs, ENSEMBLE[1])]
    study.sh("ensemble", *tests, "--submission", sub, "--quiet")
    acc, n = top1(val)
    return study.record(key("ensemble", 0), {"top1": acc, "n": n, "seconds": None, "submission": shown(sub)})


def measure(study: Study, rows: list, group: str) -> list[dict]:
    """Score every row of one table (from the ledger, or trained); the DeepBlueAI table gains the ensemble."""
    # seed 0 of every row first: the table is whole early, and each stage 2 (and the ensemble)
    # runs while its seed-0 CE model is still in this session's OUT/runs
    scores, ens = {}, None
    for s in sorted({s for _, _, seeds, _ in rows for s in seeds}):
        for name, recipe, seeds, _ in rows:
            if s in seeds:
                scores[name, s] = study.score(recipe, s)
        if group == "deepblue" and s == 0:
            ens = ensemble(study)
    out = []
    for name, recipe, seeds, ref in rows:
        row = {"row": name, "recipe": recipe, "ref": ref, "top1": {}, "seconds": 0.0, "n": None, "submission": None}
        for seed in seeds:
            e = scores[name, seed]
            row["top1"][seed], row["n"] = e["top1"], e["n"]
            row["seconds"] = None if e["seconds"] is None else row["seconds"] + e["seconds"]
            row["submission"] = row["submission"] or e.get("submission")
        out.append(row)
    if group == "deepblue":
        best = max(ENSEMBLE[1], key=lambda m: next(r for r in out if r["row"] == m)["top1"][0])
        e = ens
        out.append({"row": ENSEMBLE[0], "recipe": "fastvip ensemble", "ref": best, "top1": {0: e["top1"]},
                    "seconds": None, "n": e["n"], "submission": e["submission"]})
    return out


def complete(study: Study, group: str) -> bool:
    """Whether every run of one table is in the ledger (the table can be shown without training)."""
    keys = {key(recipe, s) for _, recipe, seeds, _ in GROUPS[group] for s in seeds}
    return (keys | ({key("ensemble", 0)} if group == "deepblue" else set())) <= study.ledger.keys()


def submissions(results: dict) -> dict:
    """The issue's test submissions, all written as their runs finished: the full framework
    (fused auxiliary row, seed 0), the DeepBlueAI ensemble and the best single trained row (seed 0)."""
    rows = {r["recipe"]: r for group in results.values() for r in group}
    subs = {}
    if FUSION_ROW in rows:
        subs["framework"] = rows[FUSION_ROW]["submission"]
    if "fastvip ensemble" in rows:
        subs["deepblueai_ensemble"] = rows["fastvip ensemble"]["submission"]
    trained = [r for r in rows.values() if r["seconds"] is not None and 0 in r["top1"]]
    if trained:
        subs["best_single"] = max(trained, key=lambda r: r["top1"][0])["submission"]
    return subs


TITLES = {"chain": "2021 chain (Table 3, one technique per row)", "deepblue": "DeepBlueAI: stage 2 and the ensemble"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "tiny-vipriors",
                    help="folder with the packed train/val/test .beton files")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "ablation",
                    help="the study's folder: protocol.json, ledger.json, log.txt, tables (committed); runs/ (not)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="the protocol: overrides for every run (e.g. epochs=60 eval_every=10)")
    ap.add_argument("--stage2-epochs", type=int, default=None, help="stage-2 length (default: the recipes')")
    ap.add_argument("--rows", choices=("all", "chain", "deepblue"), default="all")
    ap.add_argument("--min-gap", type=float, default=3.0,
                    help="first train CE and the strong baseline (seed 0) and stop unless the strong baseline "
                         "leads by this many points (the protocol's check that the schedule is long enough)")
    ap.add_argument("--submissions", type=Path, default=REPO / "benchmarks" / "submissions")
    ap.add_argument("--tag", default="", help="prefix of the submission files (default: OUT's folder name)")
    args = ap.parse_args(argv)
    from fastvip import atomic
    from fastvip.errors import FastvipError
    from fastvip.recipe import load_recipe, parse_overrides
    try:
        owned = {"seed", "train_data", "val_data", "init_from"} & parse_overrides(args.set).keys()
    except FastvipError as e:
        sys.exit(f"error: --set: {e}")
    if owned:
        sys.exit(f"error: --set {', '.join(sorted(owned))}: the study sets these itself (seeds, splits, stage 2)")
    if args.stage2_epochs is None:
        args.stage2_epochs = load_recipe(REPO / "recipes" / f"{DEEPBLUE[1][1]}.py").epochs
    study = Study(args)
    if args.min_gap > 0:  # the protocol's length check comes first: no other row is worth running before it
        sb, ce = (study.score(r, 0)["top1"] for r in (CHAIN[0][1], DEEPBLUE[0][1]))
        print(f"strong baseline {sb:.2f} % vs CE {ce:.2f} % (seed 0): {sb - ce:+.2f} points")
        if sb - ce < args.min_gap:
            sys.exit(f"error: the strong baseline leads CE by {sb - ce:.2f} < {args.min_gap} points: lengthen "
                     f"the schedule (--set epochs=...) in a new --out, or pass --min-gap 0")
    # --rows picks what to train; the tables and submissions cover every table whose runs are all
    # in the ledger, so a session that trains one table does not drop the other's from OUT
    results = {g: measure(study, GROUPS[g], g) for g in GROUPS
               if args.rows in ("all", g) or complete(study, g)}
    n = next(r["n"] for rows in results.values() for r in rows)
    hours = sum(r["seconds"] or 0 for rows in results.values() for r in rows) / 3600
    text = "\n\n".join(table(TITLES[g], rows, n) for g, rows in results.items())
    machines = sorted({f"{e['machine']['cpu']} ({e['machine']['cores']} cores, flags sha1 {e['machine']['cpu_flags_sha1']})"
                       for e in study.ledger.values() if "machine" in e})
    text += f"\n\nMachine time of the runs: {hours:.1f} h, on {'; '.join(machines) or 'unrecorded machines'}; val images: {n}."
    subs = submissions(results)
    atomic.write_json(study.out / "ablation.json", {"protocol": {"set": args.set, "stage2_epochs": args.stage2_epochs},
                                                    "val_n": n, "rows": results, "submissions": subs,
                                                    "machine_hours": hours})
    atomic.write_text(study.out / "ablation.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
