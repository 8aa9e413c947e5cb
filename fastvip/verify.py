"""``fastvip verify PATH...``: find damage before it costs a run or a submission.

A packed file: its header and tables, every sample against its checksum and, with
``--decode``, every image decoded whole (libjpeg's warnings count as damage). A run
directory: every checkpoint's digest and contents, ``recipe.json`` against ``last.pt``, and
every line of ``metrics.jsonl``. A checkpoint file: its digest and contents. One line per
problem; exit 0 when clean, 1 otherwise (``--json`` for scripts).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastvip.console import Console
from fastvip.errors import FastvipError


@dataclass
class Report:
    """What was checked and the problems found, one line each."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not damage: what could not be checked, what was done

    def to_dict(self) -> dict:
        return {"ok": not self.problems, "checked": self.checked, "problems": self.problems, "notes": self.notes}


def verify(paths: list, *, decode: bool = False, add_checksums: bool = False,
           console: Console | None = None) -> Report:
    """Check every path (packed files, run directories, checkpoint files)."""
    console = console or Console(quiet=True)
    report = Report()
    for path in map(Path, paths):
        if path.is_dir():
            verify_run_dir(path, report)
        elif path.suffix == ".pt":
            verify_checkpoint(path, report)
        elif path.is_file():
            verify_packed(path, report, decode=decode, console=console, add_checksums=add_checksums)
        else:
            report.problems.append(f"{path}: no such file or directory")
    return report


def verify_checkpoint(path: Path, report: Report) -> dict | None:
    """The digest (or, for older files, the zip's CRC-32s), then the contents; the checkpoint if sound."""
    from fastvip.methods.model import load_checkpoint
    report.checked.append(str(path))
    try:
        return load_checkpoint(path)
    except FastvipError as e:
        report.problems.append(str(e))
        return None


def verify_run_dir(run_dir: Path, report: Report) -> None:
    """Every checkpoint, ``recipe.json`` against ``last.pt`` and ``metrics.jsonl`` line by line."""
    from fastvip import recipe as recipe_mod
    ckpts = sorted(run_dir.glob("*.pt"))
    if not ckpts and not (run_dir / "recipe.json").exists():
        report.problems.append(f"{run_dir}: not a fastvip run directory (no checkpoint, no recipe.json)")
        return
    loaded = {p.name: verify_checkpoint(p, report) for p in ckpts}
    recipe_json = run_dir / "recipe.json"
    if recipe_json.exists():
        report.checked.append(str(recipe_json))
        try:
            saved = recipe_mod.from_dict(json.loads(recipe_json.read_text()))
        except (ValueError, FastvipError) as e:
            report.problems.append(f"{recipe_json}: unreadable ({e})")
        else:
            last = loaded.get("last.pt")
            if last is not None:
                differ = [k for k, v in recipe_mod.from_dict(last["recipe"]).to_dict().items()
                          if getattr(saved, k) != v]
                if differ:
                    report.problems.append(f"{recipe_json}: differs from last.pt's recipe in {', '.join(differ)}")
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        report.checked.append(str(metrics))
        lines = metrics.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError:
                last_line = i == len(lines)  # a kill can cut the line being appended; that one is expected
                report.problems.append(f"{metrics}:{i}: not a JSON line" + (" (the last, cut by a kill?)"
                                                                             if last_line else ""))


def verify_packed(path: Path, report: Report, *, decode: bool = False, console: Console | None = None,
                  add_checksums: bool = False) -> None:
    """A packed file: it opens (header and tables against their checksum, sidecar), every sample
    against its checksum and, with ``decode``, every image decodes whole without libjpeg's
    warnings. One problem line per damaged sample, with its index and its id as stored."""
    from fastvip.console import printable
    from fastvip.data.packed import CHECKSUM_MISMATCH, add_checksums as add, damaged_samples, open_packed
    console = console or Console(quiet=True)
    report.checked.append(str(path))
    try:
        packed = open_packed(path)
        if packed.checksums is None and add_checksums:
            if not packed.sidecar:
                raise FastvipError(f"{path}: --add-checksums needs fastvip's sidecar; a file written by FFCV's own "
                                   "tools gets one by `fastvip pack` of its source (or by a merge)")
            add(path)
            report.notes.append(f"{path}: checksums added (they vouch for the samples as they are now)")
            packed = open_packed(path)
        bad = set()
        if packed.checksums is None:
            report.notes.append(f"{path}: no per-sample checksums (packed before fastvip wrote them); "
                                "--add-checksums adds them")
        else:
            with console.progress(f"verify {path.name}", packed.num_samples) as bar:
                for lo in range(0, packed.num_samples, _CHUNK):
                    hi = min(lo + _CHUNK, packed.num_samples)
                    bad.update(int(i) for i in damaged_samples(packed, np.arange(lo, hi)))
                    bar.advance(hi - lo)
        problems = {i: CHECKSUM_MISMATCH for i in bad}
        if decode:
            problems.update(_decode_problems(path, packed, bad, console))
    except FastvipError as e:
        report.problems.append(str(e))
        return
    for i in sorted(problems):
        report.problems.append(f"{path}: sample {i} (id {printable(packed.ids[i])}) is damaged: {problems[i]}")
    if problems:
        report.problems.append(f"{path}: {len(problems)} damaged sample(s) of {packed.num_samples}; re-pack it")


_CHUNK = 4096


def _decode_problems(path: Path, packed, skip: set, console: Console) -> dict[int, str]:
    """Every stored JPEG decoded whole (raw-pixel samples of FFCV-written files only checked for size)."""
    from fastvip.loaders.jpeg import decode_problem
    rec = packed.records
    data = np.memmap(path, dtype=np.uint8, mode="r")
    found = {}
    with console.progress(f"decode {path.name}", packed.num_samples) as bar:
        for i in range(packed.num_samples):
            if i not in skip:
                lo, n = int(rec.ptrs[i]), int(rec.sizes[i])
                h, w = int(rec.heights[i]), int(rec.widths[i])
                if lo + n > len(data):
                    found[i] = "its bytes lie past the end of the file"
                elif rec.modes[i] == 0:
                    why = decode_problem(np.asarray(data[lo:lo + n]), h, w)
                    if why:
                        found[i] = why
                elif n != h * w * 3:
                    found[i] = f"{n} bytes of raw pixels, not {h}x{w}x3"
            if i % 256 == 255:
                bar.advance(256)
        bar.advance(packed.num_samples % 256)
    return found
