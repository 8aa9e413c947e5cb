"""fastvip: train image classifiers from scratch on small data, bottlenecked only by the GPU."""

__version__ = "0.1.0"
