"""What a study leaves in DIR: ``best.py``, ``trials.csv``, ``plots/tune.png``."""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from fastvip import atomic
from fastvip import recipe as recipe_mod


def trial_seconds(t) -> float | None:
    """Seconds the trial's runs took (summed over its segments), else its start-to-end time."""
    if t.user_attrs.get("seconds") is not None:
        return float(t.user_attrs["seconds"])
    return t.duration.total_seconds() if t.duration is not None else None


def write_csv(study: optuna.Study, path: Path) -> int:
    """``trials.csv``: number, state, one column per parameter, value, seconds; the rows written."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", *names, "value", "seconds"])
    for t in trials:
        seconds = trial_seconds(t)
        w.writerow([t.number, t.state.name, *[t.params.get(n, "") for n in names],
                    "" if t.value is None else t.value, "" if seconds is None else round(seconds, 1)])
    atomic.write_text(path, buf.getvalue())
    return len(trials)


def _base_expression(recipe_path: str, out: Path) -> str:
    """How ``best.py`` names its base: a shipped recipe by the shipped folder, else relative to itself."""
    path = Path(recipe_path).resolve()
    shipped = recipe_mod.recipes_dir().resolve()
    if path.parent == shipped:
        return f"recipes_dir() / {path.name!r}"
    return f"Path(__file__).parent / {os.path.relpath(path, out.resolve())!r}"


def best_text(study: optuna.Study, best, out: Path) -> str:
    """The text of ``best.py`` for trial ``best``: its base recipe ``dataclasses.replace``-d with the
    tuner's ``--set`` values and the trial's overrides (exactly what the trial ran)."""
    attrs = best.user_attrs
    sets = recipe_mod.parse_overrides(attrs.get("sets", []))
    drawn = recipe_mod.parse_overrides(attrs.get("overrides", []))
    base = attrs["recipe"]
    description = (f"fastvip tune: trial {best.number} of study {study.study_name}, "
                   f"val top-1 {best.value:.2f} % (last epoch)")
    lines = [f'"""Tuned {Path(base).name}: {description}."""',
             f"# written by `fastvip tune`; the trial ran in {attrs.get('run_dir', '?')}",
             "import dataclasses", "from pathlib import Path", "",
             "from fastvip.recipe import load_recipe, recipes_dir", "",
             "recipe = dataclasses.replace(",
             f"    load_recipe({_base_expression(base, out)}),"]
    if sets:
        lines.append("    # the tuner's --set values")
        lines += [f"    {k}={v!r}," for k, v in sets.items() if k not in drawn]
    if drawn:
        lines.append(f"    # trial {best.number}'s parameters")
        lines += [f"    {k}={v!r}," for k, v in drawn.items()]
    lines += [f"    description={description!r},", ")", ""]
    return "\n".join(lines)


def write_best(study: optuna.Study, out: Path) -> Path | None:
    """``DIR/best.py`` for the best COMPLETE trial (None when there is none yet)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and "recipe" in t.user_attrs]
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    path = out / "best.py"
    atomic.write_text(path, best_text(study, best, out))
    return path


def importance(study: optuna.Study, complete: int) -> tuple[dict, str]:
    """Parameter importances, or why there are none."""
    if complete < 2:
        return {}, f"parameter importance needs at least 2 completed trials ({complete} so far)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study), ""
    except Exception as e:  # noqa: BLE001 - e.g. every trial drew the same values
        return {}, f"no parameter importance: {type(e).__name__}: {e}"


def write_plot(study: optuna.Study, path: Path) -> Path:
    """``plots/tune.png``: the value of every trial with the best so far, and parameter importance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    fig, (hist, imp) = plt.subplots(1, 2, figsize=(12, 4.5))
    if complete:
        hist.scatter([t.number for t in complete], [t.value for t in complete], label="complete", zorder=3)
        best, xs, ys = -math.inf, [], []
        for t in sorted(complete, key=lambda t: t.number):
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        hist.step(xs, ys, where="post", color="black", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        hist.scatter([t.number for t in pruned], last, marker="x", color="grey", label="pruned (last report)")
    hist.set(xlabel="trial", ylabel="val top-1 (%), last epoch", title=f"study {study.study_name}: history")
    hist.grid(alpha=0.3)
    if complete or pruned:
        hist.legend(fontsize=8)
    importances, why = importance(study, len(complete))
    if importances:
        names = list(importances)[::-1]
        imp.barh(names, [importances[n] for n in names])
        imp.set(xlabel="importance (Optuna's default evaluator)", title="parameter importance")
    else:
        imp.text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=imp.transAxes)
        imp.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def disk_use(folder: Path) -> int:
    """Bytes under ``folder``."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
