"""``python -m fastvip.tune RECIPE --space SPACE.py --trials N --out DIR``: ``fastvip tune`` on its own."""
import sys

from fastvip.cli import main

sys.exit(main(["tune", *sys.argv[1:]]))
