"""The code's shape, as docs/architecture.md states it: small files and functions, imports that
point down the pipeline's stages, no reaching into another module's private names."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("fastvip", "loaders", "benchmarks", "tools")

# a module may import from its own stage and the stages below it, never from one above
STAGES = ["base", "data", "loaders", "methods", "infer", "train", "entry"]
BASE = {"fastvip", "fastvip.errors", "fastvip.atomic", "fastvip.console", "fastvip.recipe", "fastvip.distributed"}
# the paths that moved stay importable as aliases of the new modules, for users, never for fastvip's own code
ALIASES = {"fastvip.model", "fastvip.ema", "fastvip.evaluate", "fastvip.tta", "fastvip.autoaugment"}


def _sources(*roots):
    for root in roots:
        yield from sorted((REPO / root).rglob("*.py"))


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "loaders":  # installed as fastvip.loaders (setup.cfg's package_dir)
        parts = ["fastvip"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _stage(module: str) -> str:
    if module in BASE:
        return "base"
    if module in ALIASES or module in ("fastvip.cli", "fastvip.__main__", "fastvip.verify", "fastvip.tune"):
        return "entry"
    if module.startswith("fastvip.tune."):  # the tune command is a package: all of it is entry
        return "entry"
    return module.split(".")[1]


def _is_module(name: str) -> bool:
    """Whether a dotted name is a module of the tree (a .py file, a package, or a C extension's source)."""
    parts = name.split(".")
    if parts[:2] == ["fastvip", "loaders"]:
        parts = ["loaders"] + parts[2:]
    path = REPO.joinpath(*parts)
    return path.is_dir() or any(path.with_suffix(s).exists() for s in (".py", ".c"))


def _imports(path: Path, module: str):
    """(line, imported module, names) for every import, the ones inside functions too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, target, [a.name for a in node.names]


def test_no_file_over_600_lines_no_function_over_100():
    long = []
    for path in _sources(*CHECKED):
        text = path.read_text()
        if text.count("\n") > 600:
            long.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                            f"{node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_imports_point_down_the_stages():
    up = []
    for path in _sources("fastvip", "loaders"):
        module = _module(path)
        if module in ALIASES:
            continue
        mine = STAGES.index(_stage(module))
        for line, target, names in _imports(path, module):
            if not target.startswith("fastvip"):
                continue
            # "from fastvip import atomic" names modules: judge each
            for full in ([f"{target}.{n}" if _is_module(f"{target}.{n}") else target for n in names]
                         if target == "fastvip" else [target]):
                if full in ALIASES:
                    up.append(f"{module}:{line} imports the alias {full}")
                elif STAGES.index(_stage(full)) > mine:
                    up.append(f"{module}:{line} ({_stage(module)}) imports {full} ({_stage(full)})")
    assert not up, "\n".join(up)


def test_no_module_reaches_into_another_modules_private_names():
    reach = []
    for path in _sources(*CHECKED):
        module = _module(path)
        tree = ast.parse(path.read_text())
        mods = {}
        for line, target, names in _imports(path, module):
            for n in names:  # a private submodule (a C extension's) is its package's own business
                if (target.startswith("fastvip") and n.startswith("_") and not n.startswith("__")
                        and not _is_module(f"{target}.{n}")):
                    reach.append(f"{path.relative_to(REPO)}:{line} from {target} import {n}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastvip"):
                mods.update({a.asname or a.name: node.module for a in node.names})
            elif isinstance(node, ast.Import):
                mods.update({(a.asname or a.name).split(".")[0]: a.name for a in node.names
                             if a.name.startswith("fastvip")})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in mods
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                reach.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not reach, "\n".join(reach)


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_moved_paths_are_the_new_modules(name):
    import importlib
    old = importlib.import_module(name)
    assert old.__name__ != name and importlib.import_module(old.__name__) is old
