"""Stage 4, training: ``fastvip run`` and the step it repeats."""
from fastvip.train.loop import (StepContext, Trainer, build_trainer, optimizer_impl, prepare_batch, run,
                                skips_on_device, train_step)
from fastvip.train.loop import _optimizer as build_optimizer  # noqa: F401 (temporary)
