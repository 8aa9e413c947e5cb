"""``python -m fastvip`` (also what ``torchrun -m fastvip`` runs)."""
import sys

from fastvip.cli import main

sys.exit(main())
