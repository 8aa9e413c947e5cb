"""The GPU check: every CUDA figure and test fastvip needs, in one device call of at most 6 minutes.

    bash tools/gpu_check.sh [--parts correctness,throughput,jpeg,memory] [--out DIR] [--budget-scale F]

Run by ``tools/gpu_check.sh`` after it has set up the kit (``device_kit/core``, built here by
``tools/device_kit.sh``). Parts, most important first, each with its own time budget (seconds
of wall time; a part past it is stopped, reported as ``timeout`` with what it wrote, and the
next part still runs):

- ``correctness`` (110 s): ``pytest -m cuda`` (``tests/test_cuda.py``: bf16 / fp16 steps,
  channels-last, ``torch.compile``, EMA / Mean Teacher, device augmentation, predict with
  TTA, the FFCV and resident loaders on CUDA, and the sync checks: a steady-state step and a
  resident batch under ``torch.cuda.set_sync_debug_mode("error")``).
- ``throughput`` (100 s): ``benchmarks/throughput.py`` model-only against end-to-end
  (``e2e_over_model``; targets 0.95 with the FFCV loader, 0.97 for the resident loader and
  resnet18) for resnet18 and resnet50 at 160 px and tresnet_xl at 224 px on 16 decode threads,
  plus ``x_timm`` for tresnet_xl (fastvip's plain step over timm's train.py step).
- ``jpeg`` (40 s): the resident loader's JPEG storage (``resident_storage=jpeg``: packed bytes
  in memory, each batch decoded by torchvision's nvJPEG ``decode_jpeg`` on the GPU), through
  ``benchmarks/throughput.py --loader resident-jpeg``: img/s of decode + crop + resize alone
  (loader mode, batches on the GPU), and model-only against end-to-end for resnet18 at 160 px
  (``e2e_over_model``).
- ``memory`` (70 s): channels-last against NCHW at each recipe's resolution and batch for
  tresnet_xl, resnest101e, seresnext101_32x4d, efficientnet_b2 and resnet50
  (``benchmarks/memory_format.py``), written to ``OUT/memory_formats.json`` (its ``cuda``
  section goes into ``fastvip/memory_formats.json`` here).

A part that cannot run here (no CUDA, no ffcv, no packed sample) is ``skipped`` with the
reason; DALI never travels in one call (its wheels are 424 MB), so the DALI loader is always
reported skipped. Results: ``OUT/gpu_check.json`` (one object per part: status, seconds,
reason, figures) and ``OUT/gpu_check.md`` (the same as a table), plus each part's log.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = {"correctness": 110, "throughput": 100, "jpeg": 40, "memory": 70}  # seconds: 320 of a 6-minute call
MEMORY_MODELS = "tresnet_xl,resnest101e,seresnext101_32x4d,efficientnet_b2,resnet50"
# (model, resolution, recipe, batch): the throughput rows, most important first
THROUGHPUT = [("resnet18", 160, "recipes/table1_resnet50.py", 256),
              ("resnet50", 160, "recipes/table1_resnet50.py", 256),
              ("tresnet_xl", 224, "recipes/tresnet_xl.py", 128)]


def probe() -> dict:
    """What this machine can run: CUDA, ffcv, the region decoder, DALI, the packed sample."""
    have = {"python": sys.version.split()[0]}
    try:
        import torch
        have.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError as e:
        have.update(torch=None, cuda=False, gpu=None, torch_error=str(e))
    for name, mod in (("ffcv", "ffcv"), ("region_decoder", "fastvip.loaders.jpeg"), ("dali", "nvidia.dali")):
        try:
            __import__(mod)
            have[name] = True
        except Exception as e:  # noqa: BLE001 - any import failure means "not here"
            have[name] = False
            have[f"{name}_error"] = (str(e).splitlines() or [type(e).__name__])[0][:200]
    sample = os.environ.get("FASTVIP_SAMPLE") or str(REPO / "device_kit" / "core" / "sample.beton")
    have["sample"] = sample if Path(sample).is_file() else None
    return have


def run_part(cmd: list[str], log: Path, budget: float) -> tuple[str, float, int | None]:
    """Run ``cmd`` in its own process group, output to ``log``; stop it at ``budget`` seconds.
    Returns (passed | failed | timeout, seconds, exit code)."""
    t0 = time.monotonic()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        p = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            rc = p.wait(timeout=max(1.0, budget))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(p.pid, signal.SIGINT)  # pytest writes its JUnit XML on an interrupt
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # whatever the leader did, nothing of the part may live on into the next (GPU memory)
        _signal_group(p.pid, signal.SIGKILL)
        p.wait()
    if timed_out:
        return "timeout", time.monotonic() - t0, None
    return ("passed" if rc == 0 else "failed"), time.monotonic() - t0, rc


def _signal_group(pid: int, sig) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):  # already gone
        pass


def _missing(have: dict, *needs: str) -> str | None:
    reasons = {"cuda": "no CUDA device",
               "ffcv": f"ffcv is not importable ({have.get('ffcv_error')}); build the kit: tools/device_kit.sh",
               "region_decoder": f"the region decoder is not built for this Python ({have.get('region_decoder_error')})",
               "sample": "no packed sample (device_kit/core/sample.beton or FASTVIP_SAMPLE)"}
    for n in needs:
        if not have.get(n):
            return reasons[n]
    return None


def correctness(have, out: Path, budget: float) -> dict:
    why = _missing(have, "cuda", "ffcv", "region_decoder")
    if why:
        return {"status": "skipped", "reason": why}
    xml = out / "cuda_tests.xml"
    xml.unlink(missing_ok=True)  # a stale report must not pass for this run's
    status, secs, rc = run_part([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py",
                                 "-p", "no:cacheprovider", f"--junitxml={xml}"], out / "correctness.log", budget)
    figures = {}
    if xml.is_file():
        import xml.etree.ElementTree as ET
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        figures = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        figures["failed_tests"] = [c.get("name") for c in suite.iter("testcase")
                                   if c.find("failure") is not None or c.find("error") is not None]
    return {"status": status, "seconds": round(secs, 1), "rc": rc, "figures": figures}


def throughput(have, out: Path, budget: float) -> dict:
    why = _missing(have, "cuda", "ffcv", "region_decoder", "sample")
    if why:
        return {"status": "skipped", "reason": why, "dali": "skipped: DALI does not travel in one call"}
    t_end = time.monotonic() + budget
    rows, statuses = [], []
    for model, res, recipe, batch in THROUGHPUT:
        left = t_end - time.monotonic()
        if left < 10:
            statuses.append("timeout")
            rows.append({"model": model, "res": res, "status": "not started (budget spent)"})
            continue
        js = out / f"throughput_{model}_{res}.json"
        modes = "model,e2e"
        cmd = [sys.executable, "benchmarks/throughput.py", "--data", have["sample"], "--loader", "ffcv,resident",
               "--mode", modes, "--recipe", recipe, "--model", model, "--res", str(res), "--batch-size", str(batch),
               "--workers", str(os.cpu_count() or 16), "--passes", "3", "--pass-epochs", "3", "--steps", "10",
               "--warmup", "5", "--json", str(js)]
        status, secs, rc = run_part(cmd, out / "throughput.log", left)
        statuses.append(status)
        row = {"model": model, "res": res, "status": status, "seconds": round(secs, 1)}
        if js.is_file():
            for r in json.loads(js.read_text()):
                if r.get("mode") == "e2e":
                    row[f"e2e_over_model_{r['loader']}"] = round(r.get("e2e_over_model") or 0, 3)
                    row[f"e2e_img_per_s_{r['loader']}"] = round(r["img_per_s"])
                elif r.get("step"):
                    row[f"model_img_per_s_{r['step']}"] = round(r["img_per_s"])
                    if r.get("x_timm") is not None:
                        row["x_timm"] = round(r["x_timm"], 3)
        rows.append(row)
    status = "passed" if all(s == "passed" for s in statuses) else (
        "timeout" if "timeout" in statuses else "failed")
    return {"status": status, "figures": rows, "dali": "skipped: DALI does not travel in one call"}


# (model, resolution, recipe, batch) of the JPEG-storage row
JPEG_ROW = ("resnet18", 160, "recipes/table1_resnet50.py", 256)


def jpeg(have, out: Path, budget: float) -> dict:
    """The GPU decode path: the resident loader with JPEG storage, loader alone and end to end."""
    why = _missing(have, "cuda", "ffcv", "region_decoder", "sample")
    if why:
        return {"status": "skipped", "reason": why}
    model, res, recipe, batch = JPEG_ROW
    js = out / "jpeg_storage.json"
    js.unlink(missing_ok=True)
    cmd = [sys.executable, "benchmarks/throughput.py", "--data", have["sample"], "--loader", "resident-jpeg",
           "--mode", "loader,model,e2e", "--recipe", recipe, "--model", model, "--res", str(res),
           "--batch-size", str(batch), "--workers", str(os.cpu_count() or 16), "--passes", "3",
           "--pass-epochs", "3", "--steps", "10", "--warmup", "5", "--json", str(js)]
    status, secs, rc = run_part(cmd, out / "jpeg.log", budget)
    figures = {"model": model, "res": res, "batch_size": batch}
    if js.is_file():
        for r in json.loads(js.read_text()):
            if r.get("mode") == "loader":
                figures.update(decode_crop_img_per_s=round(r["img_per_s"]),
                               decode_crop_cpu_s_per_1k=r.get("cpu_s_per_1k"), setup_s=r.get("setup_s"))
            elif r.get("mode") == "e2e":
                figures.update(e2e_img_per_s=round(r["img_per_s"]),
                               e2e_over_model=round(r.get("e2e_over_model") or 0, 3))
            elif r.get("step") == "fastvip":
                figures["model_img_per_s"] = round(r["img_per_s"])
            if r.get("peak_gpu_mem_mb") is not None:
                figures["peak_gpu_mem_mb"] = round(r["peak_gpu_mem_mb"])
    return {"status": status, "seconds": round(secs, 1), "rc": rc, "figures": figures}


def memory(have, out: Path, budget: float) -> dict:
    why = _missing(have, "cuda")
    if why:
        return {"status": "skipped", "reason": why}
    table = out / "memory_formats.json"
    if not table.exists():
        _write(table, (REPO / "fastvip" / "memory_formats.json").read_text())
    status, secs, rc = run_part([sys.executable, "benchmarks/memory_format.py", "--device", "cuda", "--models",
                                 MEMORY_MODELS, "--steps", "5", "--warmup", "2", "--table", str(table)],
                                out / "memory.log", budget)
    cuda = json.loads(table.read_text()).get("cuda", {}) if table.is_file() else {}
    return {"status": status, "seconds": round(secs, 1), "rc": rc, "figures": cuda}


RUNNERS = {"correctness": correctness, "throughput": throughput, "jpeg": jpeg, "memory": memory}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(have: dict, results: dict) -> str:
    lines = ["# GPU check", "", f"- machine: {have.get('gpu') or 'no GPU'}, torch {have.get('torch')}, "
             f"Python {have.get('python')}; ffcv {'yes' if have.get('ffcv') else 'no'}, "
             f"DALI {'yes' if have.get('dali') else 'no'}", "",
             "| part | status | seconds | notes |", "|---|---|---|---|"]
    for name, r in results.items():
        note = r.get("reason", "")
        if name == "correctness" and r.get("figures"):
            f = r["figures"]
            note = f"{f['tests']} tests, {f['failures'] + f['errors']} failed, {f['skipped']} skipped" + (
                f": {', '.join(f['failed_tests'])}" if f["failed_tests"] else "")
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '-')} | {note} |")
    tp = results.get("throughput", {}).get("figures")
    if tp:
        keys = sorted({k for row in tp for k in row} - {"model", "res", "status", "seconds"})
        lines += ["", "| model | res | status | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
        for row in tp:
            lines.append(f"| {row['model']} | {row['res']} | {row['status']} | "
                         + " | ".join(str(row.get(k, "-")) for k in keys) + " |")
    jp = results.get("jpeg", {}).get("figures")
    if jp:
        lines += ["", "| JPEG storage | " + " | ".join(jp) + " |", "|---" * (1 + len(jp)) + "|",
                  "| resident-jpeg | " + " | ".join(str(v) for v in jp.values()) + " |"]
    mem = results.get("memory", {}).get("figures")
    if mem:
        lines += ["", "| model (memory format) | entry |", "|---|---|"]
        lines += [f"| {m} | {json.dumps(v)} |" for m, v in mem.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "gpu_check_out"))
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's budget")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"gpu_check: unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    have = probe()
    results = {}
    for name in parts:
        budget = PARTS[name] * args.budget_scale
        t0 = time.monotonic()
        results[name] = RUNNERS[name](have, args.out, budget)
        results[name].setdefault("seconds", round(time.monotonic() - t0, 1))
        results[name]["budget_s"] = budget
        print(f"gpu_check: {name}: {results[name]['status']}"
              + (f" ({results[name]['reason']})" if results[name].get("reason") else ""), flush=True)
        doc = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": have, "parts": results}
        _write(args.out / "gpu_check.json", json.dumps(doc, indent=2) + "\n")  # after every part
        _write(args.out / "gpu_check.md", markdown(have, results))
    print(f"gpu_check: wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
