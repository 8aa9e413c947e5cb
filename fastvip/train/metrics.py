"""``metrics.jsonl``: one JSON object per line, appended durably, read tolerantly."""
from __future__ import annotations

import json
import os
from pathlib import Path

from fastvip import atomic


def append(path: Path, record: dict) -> None:
    """Append one line and fsync it (a kill can cut at most this line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read(path: Path) -> list[dict]:
    """All records; a line cut by a kill is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def keep_epochs_up_to(path: Path, done_epochs: int) -> None:
    """Drop epoch lines after the checkpoint (and cut lines) so each epoch appears once."""
    if path.exists():
        kept = [r for r in read(path) if not (r.get("event") == "epoch" and r.get("epoch", 0) > done_epochs)]
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
