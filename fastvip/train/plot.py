"""``fastvip plot``: training curves of one or more runs, overlaid, as a PNG."""
from __future__ import annotations

import io
from pathlib import Path

from fastvip import atomic

from fastvip.train import metrics
from fastvip.errors import FastvipError

# panel title -> (metrics key, line style) for each series drawn in it
PANELS = {
    "train loss": [("train_loss", "-")],
    "val top-1 (%)": [("val_top1", "-"), ("val_top1_ema", "--")],
    "learning rate": [("lr", "-")],
    "train img/s": [("img_per_s", "-")],
}


def read_epochs(run_dir: Path) -> list[dict]:
    """The epoch lines of a run's ``metrics.jsonl`` (a line cut by a kill is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FastvipError(f"{run_dir} has no metrics.jsonl (is it a fastvip run directory?)")
    return [r for r in metrics.read(path) if r.get("event") == "epoch"]


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> dict[str, list[str]]:
    """Write the curves of ``run_dirs`` to ``out`` (PNG); returns the series drawn per panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(r), read_epochs(r)) for r in run_dirs]
    if not any(epochs for _, epochs in runs):
        raise FastvipError("no finished epoch to plot in " + ", ".join(str(r) for r in run_dirs))
    names = _labels([r for r, _ in runs])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    drawn: dict[str, list[str]] = {title: [] for title in PANELS}
    for ax, (title, series) in zip(axes.flat, PANELS.items()):
        for i, ((_, epochs), name) in enumerate(zip(runs, names)):
            for key, style in series:
                pts = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
                if not pts:
                    continue
                label = f"{name} ({'EMA' if key.endswith('_ema') else 'raw'})" if len(series) > 1 else name
                ax.plot(*zip(*pts), style, color=f"C{i % 10}", label=label, marker="." if len(pts) < 30 else None)
                drawn[title].append(label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn[title]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, buf.getvalue())
    return drawn


def _labels(paths: list[Path]) -> list[str]:
    """Short, distinct names: the run folder names, with parents added where they collide."""
    names = [p.name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names
