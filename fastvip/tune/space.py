"""The search space: ``SPACE.py`` defines ``def space(trial) -> dict`` of recipe overrides.

The values are drawn with Optuna's ``trial.suggest_*`` and handed to each trial as
``fastvip run --set key=value``. Before any trial starts, :func:`check_space` calls the function
with probe trials that draw every range's ends and every categorical choice, so an unknown field
(named with the closest one), a value of the wrong type or a recipe that fails
:meth:`fastvip.recipe.Recipe.validate` is a one-line error, not a failed trial an hour later.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Callable

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler

from fastvip import recipe as recipe_mod
from fastvip.errors import FastvipError
from fastvip.recipe import Recipe, run_python_file

PROBES_MAX = 16          # probe trials at most (ends of the ranges, then each categorical choice)
TUNER_OWNS = ("out",)    # fields the tuner sets itself: each trial runs in DIR/trials/NNNN


def load_space(path: str | Path) -> Callable:
    """Run ``SPACE.py`` and return its ``space`` function."""
    path = Path(path)
    if not path.is_file():
        raise FastvipError(f"space {path} does not exist")
    namespace = run_python_file(path, "space")
    fn = namespace.get("space")
    if not callable(fn):
        raise FastvipError(f"space {path} must define `def space(trial) -> dict` (recipe overrides)")
    return fn


def value_text(value) -> str:
    """A drawn value as ``--set`` text (what the trial's command line carries)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _type_ok(kind, value) -> bool:
    """Whether ``value`` is of recipe field type ``kind`` (no bool for numbers, no number for text)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(a, value) for a in args)
    if kind is type(None):
        return value is None
    if origin in (tuple, list):
        return isinstance(value, (list, tuple)) and all(_type_ok(args[0], v) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def override_pairs(space_fn: Callable, trial, where: str) -> list[str]:
    """Call ``space(trial)``; its overrides as checked ``key=value`` texts."""
    try:
        drawn = space_fn(trial)
    except FastvipError as e:
        raise FastvipError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a bug in the user's space function
        raise FastvipError(f"{where}: space(trial) raised {type(e).__name__}: {e}") from None
    if not isinstance(drawn, dict):
        raise FastvipError(f"{where}: space(trial) must return a dict of recipe overrides, "
                           f"got {type(drawn).__name__}")
    pairs = []
    for key, value in drawn.items():
        if not isinstance(key, str):
            raise FastvipError(f"{where}: override keys must be recipe field names, got {key!r}")
        if key in TUNER_OWNS:
            raise FastvipError(f"{where}: {key!r} is set by the tuner (each trial runs in DIR/trials/NNNN)")
        pair = f"{key}={value_text(value)}"
        try:
            recipe_mod.parse_overrides([pair])  # unknown fields (with the closest), unparsable text
        except FastvipError as e:
            raise FastvipError(f"{where}: {e}") from None
        kind = recipe_mod.FIELD_TYPES[key]
        if not _type_ok(kind, value):
            name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
            raise FastvipError(f"{where}: recipe field {key!r} expects {name}, got {value!r}")
        pairs.append(pair)
    return pairs


def apply(base: Recipe, pairs: list[str]) -> Recipe:
    """``base`` with the overrides ``pairs``, validated."""
    return dataclasses.replace(base, **recipe_mod.parse_overrides(pairs)).validate()


def check_data(recipe: Recipe, where: str) -> None:
    """The objective is val top-1: a trial needs val_data, and files that exist."""
    if not recipe.val_data:
        raise FastvipError(f"{where}: the objective is val top-1, and the recipe has no val_data "
                           "(give it with --set val_data=...)")
    for f in [*recipe.train_files, recipe.val_data]:
        if not Path(f).exists():
            raise FastvipError(f"{where}: {f} does not exist")


class ProbeSampler(BaseSampler):
    """Draws probe ``k``: the low end of every range (even ``k``) or the high end (odd), and
    choice ``k`` (modulo) of every categorical; ``widest`` is the most choices seen."""

    def __init__(self, k: int):
        self.k, self.widest = k, 0

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        if isinstance(param_distribution, CategoricalDistribution):
            choices = param_distribution.choices
            self.widest = max(self.widest, len(choices))
            return choices[self.k % len(choices)]
        return param_distribution.low if self.k % 2 == 0 else param_distribution.high


def check_space(space_fn: Callable, base: Recipe, space_path: str | Path) -> int:
    """Probe ``space_fn`` against ``base`` (the recipe with its ``--set`` values); the probes run."""
    k, needed = 0, 2
    while k < min(needed, PROBES_MAX):
        sampler = ProbeSampler(k)
        trial = optuna.create_study(sampler=sampler, direction="maximize").ask()
        where = f"space {space_path}"
        pairs = override_pairs(space_fn, trial, where)
        drawn = ", ".join(f"{n}={v!r}" for n, v in trial.params.items())
        where = f"space {space_path} (with {drawn})" if drawn else where
        try:
            recipe = apply(base, pairs)
        except FastvipError as e:
            raise FastvipError(f"{where}: {e}") from None
        check_data(recipe, where)
        needed = max(needed, sampler.widest)
        k += 1
    return k
