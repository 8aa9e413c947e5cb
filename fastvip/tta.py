"""``fastvip.tta`` is ``fastvip.infer.tta`` (moved; this path stays importable: docs/architecture.md)."""
import importlib
import sys

# the same module object under both names, so that attributes set on one are seen through the other
sys.modules[__name__] = importlib.import_module("fastvip.infer.tta")
