"""``fastvip verify PATH...``: find damage before it costs a run or a submission.

A packed file: that it opens (per-sample checksums are not written yet). A run
directory: every checkpoint's digest and contents, ``recipe.json`` against ``last.pt``, and
every line of ``metrics.jsonl``. A checkpoint file: its digest and contents. One line per
problem; exit 0 when clean, 1 otherwise (``--json`` for scripts).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fastvip.console import Console
from fastvip.errors import FastvipError


@dataclass
class Report:
    """What was checked and the problems found, one line each."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ok": not self.problems, "checked": self.checked, "problems": self.problems}


def verify(paths: list, *, decode: bool = False, console: Console | None = None) -> Report:
    """Check every path (packed files, run directories, checkpoint files)."""
    console = console or Console(quiet=True)
    report = Report()
    for path in map(Path, paths):
        if path.is_dir():
            verify_run_dir(path, report)
        elif path.suffix == ".pt":
            verify_checkpoint(path, report)
        elif path.is_file():
            verify_packed(path, report, decode=decode, console=console)
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


def verify_packed(path: Path, report: Report, *, decode: bool = False, console: Console | None = None) -> None:
    """A packed file: it must open (header, tables, sidecar). Per-sample checksums are not stored
    yet, so sample bytes are not checked here (``decode`` is accepted for when they are)."""
    from fastvip.data.packed import open_packed
    report.checked.append(str(path))
    try:
        open_packed(path)
    except FastvipError as e:
        report.problems.append(str(e))
