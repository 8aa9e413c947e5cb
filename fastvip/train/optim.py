"""The optimiser of a recipe: timm's factory, and which torch kernel (fused, foreach, loop) runs it."""
from __future__ import annotations

import inspect

import torch

from fastvip.errors import FastvipError
from fastvip.recipe import Recipe

OPTIMIZER_IMPL_KWARGS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def optimizer_impl(recipe: Recipe, device: torch.device) -> str:
    """``optimizer_impl`` resolved: ``auto`` is fused where torch has a fused kernel for the
    optimiser (SGD, AdamW; one kernel for all parameters), else foreach (a few batched
    kernels) on CUDA, and torch's own default on CPU."""
    if recipe.optimizer_impl != "auto":
        return recipe.optimizer_impl
    if device.type != "cuda":
        return "default"
    if recipe.optimizer in ("sgd", "adamw"):
        return "fused"
    # timm releases before RMSpropTF grew a foreach argument run its per-tensor loop
    return "foreach" if _takes(recipe.optimizer, "foreach") else "default"


def optimizer_class(name: str):
    """The class timm's factory builds for a recipe optimiser."""
    if name == "rmsproptf":
        from timm.optim import RMSpropTF
        return RMSpropTF
    return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]


def _takes(name: str, arg: str) -> bool:
    return arg in inspect.signature(optimizer_class(name)).parameters


def build_optimizer(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer factory for ``recipe``; weight decay skips norm layers and biases."""
    from timm.optim import create_optimizer_v2
    name = recipe.optimizer
    kwargs = dict(OPTIMIZER_IMPL_KWARGS.get(optimizer_impl(recipe, device), {}))
    missing = [k for k in kwargs if not _takes(name, k)]
    if missing:
        import timm
        raise FastvipError(f"optimizer_impl={recipe.optimizer_impl}: {optimizer_class(name).__name__} of timm "
                           f"{timm.__version__} has no {missing[0]} argument; use optimizer_impl=auto or a newer timm")
    if name == "sgd":  # timm's "sgd" is Nesterov; "momentum" is plain momentum SGD
        name = "nesterov" if recipe.nesterov else "momentum"
        kwargs["momentum"] = recipe.momentum
    elif name == "rmsproptf":
        kwargs["momentum"] = recipe.momentum
    if recipe.opt_eps is not None:
        kwargs["eps"] = recipe.opt_eps
    return create_optimizer_v2(model, opt=name, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
                               filter_bias_and_bn=True, **kwargs)


def align_state_to_params(optimizer: torch.optim.Optimizer) -> int:
    """Give every per-parameter state tensor its parameter's strides (returns how many changed).

    ``load_state_dict`` keeps the strides a tensor was saved with; a run resumed in another
    memory format than it was checkpointed in (say channels-last where the table now says so)
    would hand a fused kernel buffers whose strides differ from their parameters'."""
    changed = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    like = torch.empty_like(p, dtype=value.dtype)  # preserve_format: p's strides
                    optimizer.state[p][key] = like.copy_(value)
                    changed += 1
    return changed
