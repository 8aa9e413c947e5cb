"""Fake CUDA: the CUDA code paths run on a CPU, with the host syncs and device mixes they make.

:func:`fake_cuda` runs its block under torch's ``FakeTensorMode(allow_non_fake_inputs=True)``
with a :class:`~torch.utils._python_dispatch.TorchDispatchMode` above it (:class:`_Mode`) that
sees every aten op first:

- a tensor on ``cuda`` is a fake tensor (shape, dtype, strides, device; no data). An op
  that touches no fake tensor and makes nothing on ``cuda`` runs for real on the CPU, so
  host-side work (AutoAugment's draws and groups, numpy indices) computes real values;
- **host syncs** are recorded (:class:`Sync`) with where they were made: ``item``
  (``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``; ``aten.equal``),
  ``to-host`` (a copy from ``cuda`` to the CPU, ``.cpu()``, ``.tolist()``), ``data-shape``
  (``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, ...: output shapes that
  depend on values) and ``upload`` (a *blocking* copy to ``cuda``: torch then synchronises the
  stream, as ``torch.cuda.set_sync_debug_mode`` reports; ``non_blocking=True`` copies are
  not syncs). Values read back are ones (``True``, ``1``, ``1.0``), shapes data-dependent
  ops cannot know are their upper bound (every element selected);
- an op mixing CPU and CUDA tensors (0-dim CPU tensors aside, as CUDA kernels take them)
  raises :class:`DeviceMix`, except the copies between the two; so does a random op whose
  generator is on another device type than its output;
- ``torch.Generator("cuda")`` is a :class:`FakeCudaGenerator` (device ``cuda:0``, its own
  seed and Philox offset, the 16-byte CUDA state);
- the fused SGD / Adam / AdamW kernels get implementations that apply the CUDA kernels'
  checks (``aten/src/ATen/native/cuda/Fused*Kernel.cu``, ``check_fast_path_restrictions``:
  one device, one dtype, strided, non-overlapping and dense, params and every state list
  with the same sizes and strides; ``grad_scale`` / ``found_inf`` float32 on the params'
  device, ``found_inf`` one element) and record each call (:attr:`FakeCuda.fused`); a fused
  SGD first step that is given ``found_inf`` raises :class:`FusedHazard` (skipped, it would leave
  the momentum buffers uninitialised);
- ``Tensor.backward`` on a fake CUDA tensor (autograd's engine needs a CUDA context) assigns
  each leaf of the graph a gradient with its strides, as ``AccumulateGrad`` lays them out;
  ``pin_memory`` is a no-op; ``torch.autocast("cuda")`` and ``GradScaler("cuda")`` stay on
  (``amp_definitely_not_available`` and ``is_bf16_supported`` are stubbed), so bf16 and fp16
  run as on a GPU; ``torch.cuda.mem_get_info`` and ``get_device_properties`` describe an
  80 GB H100.

Everything is undone when the block ends. What this cannot see: the ops of a real backward
pass, kernel speed, and syncs made inside libraries that bypass the dispatcher.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)
GiB = 1 << 30
_REAL_GENERATOR = torch.Generator
_TORCH_DIR = os.path.dirname(torch.__file__)
_SKIP_DIRS = (_TORCH_DIR + os.sep, os.path.dirname(contextlib.__file__) + os.sep + "contextlib.py", __file__)


class DeviceMix(RuntimeError):
    """An op would mix CPU and CUDA tensors, or use a generator of another device type."""


class FusedHazard(RuntimeError):
    """A fused optimiser call the CUDA kernel accepts but that can corrupt optimiser state."""


@dataclass
class Sync:
    kind: str    # item, to-host, data-shape, upload
    op: str
    where: str   # innermost frames outside torch: "file:line (function)"
    phase: str   # the label of the phase it happened in (FakeCuda.phase)

    def __str__(self):
        return f"{self.kind} {self.op} in {self.phase!r} at {self.where}"


def _is_fake_cuda(t) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


def _where(depth: int = 2) -> str:
    """The innermost ``depth`` frames of the caller that are not torch's or this module's."""
    frames, f = [], sys._getframe(1)
    while f is not None and len(frames) < depth:
        name = f.f_code.co_filename
        if not name.startswith(_SKIP_DIRS):
            short = name.split("site-packages" + os.sep)[-1].replace(os.getcwd() + os.sep, "")
            frames.append(f"{short}:{f.f_lineno} ({f.f_code.co_name})")
        f = f.f_back
    return " <- ".join(frames) or "?"


def _device_of(d) -> torch.device | None:
    if d is None:
        return None
    d = torch.device(d)
    return torch.device("cuda", 0) if d.type == "cuda" and d.index is None else d


# ------------------------------------------------------------------ a CUDA generator without CUDA

_TAG_BASE = 0xFA4EC0DA << 30
_TAGS = itertools.count()
_GENERATORS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def fake_generator(g) -> FakeCudaGenerator | None:
    """The :class:`FakeCudaGenerator` behind ``g`` (an op's argument), if it is one."""
    if isinstance(g, FakeCudaGenerator):
        return g
    return _GENERATORS.get(_REAL_GENERATOR.initial_seed(g)) if isinstance(g, _REAL_GENERATOR) else None


class FakeCudaGenerator(_REAL_GENERATOR):
    """A ``torch.Generator`` on ``cuda:N``: its own seed and Philox offset (advanced by the
    random ops that use it) and CUDA's 16-byte state (seed, offset). The CPU generator
    underneath is never drawn from: fake kernels draw nothing."""

    def __new__(cls, device=CUDA):
        return super().__new__(cls)

    def __init__(self, device=CUDA):
        super().__init__()
        self._device = _device_of(device)
        self._seed = 67280421310721  # CUDA's default seed
        self._offset = 0
        # an op receives a new Python object for the same generator, so the CPU generator
        # underneath carries a tag (its seed, never reseeded) that finds this one again
        tag = _TAG_BASE + next(_TAGS)
        _REAL_GENERATOR.manual_seed(self, tag)
        _GENERATORS[tag] = self

    @property
    def device(self) -> torch.device:  # noqa: D102 - torch.Generator's
        return self._device

    def manual_seed(self, seed):
        self._seed, self._offset = int(seed) & (2**64 - 1), 0
        return self

    def seed(self):
        self._seed, self._offset = int(_REAL_GENERATOR().seed()), 0
        return self._seed

    def initial_seed(self):
        return self._seed

    def get_offset(self):
        return self._offset

    def set_offset(self, offset):
        self._offset = int(offset)
        return self

    def get_state(self):
        return torch.tensor(list(self._seed.to_bytes(8, "little") + self._offset.to_bytes(8, "little")),
                            dtype=torch.uint8)

    def set_state(self, state):
        raw = bytes(state.tolist())
        if len(raw) != 16:
            raise RuntimeError(f"RNG state is wrong size: a CUDA generator's is 16 bytes, got {len(raw)}")
        self._seed, self._offset = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        return self

    def advance(self, numel: int) -> None:
        # a multiple of 4, as Philox counts (the real increment depends on the kernel's grid)
        self._offset += 4 * max(1, math.ceil(numel / (4 * 65536)))


class _GeneratorMeta(type):
    def __call__(cls, device="cpu"):
        d = torch.device(device)
        return FakeCudaGenerator(d) if d.type == "cuda" else _REAL_GENERATOR(d)

    def __instancecheck__(cls, obj):
        return isinstance(obj, _REAL_GENERATOR)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _REAL_GENERATOR)


class Generator(metaclass=_GeneratorMeta):
    """``torch.Generator`` while fake CUDA is on: ``cuda`` devices give a :class:`FakeCudaGenerator`."""


# ------------------------------------------------------------------ the fused optimiser kernels

def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill one block of memory, in some order of dims."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _fast_path(lists: list[list[torch.Tensor]], what: str) -> None:
    """ATen's ``check_fast_path_restrictions`` as the fused CUDA kernels call it."""
    first = lists[0][0]
    for lst in lists:
        if len(lst) != len(lists[0]):
            raise RuntimeError(f"{what}: tensor lists must have the same number of tensors, "
                               f"got {len(lists[0])} and {len(lst)}")
        for t in lst:
            if t.device != first.device or t.dtype != first.dtype or t.layout != torch.strided \
                    or not _dense(t):
                raise RuntimeError(f"{what} must have same dtype, device, and layout (found {t.dtype} on "
                                   f"{t.device}, dense={_dense(t)}; "
                                   f"expected {first.dtype} on {first.device})")
    for lst in lists[1:]:
        for p, t in zip(lists[0], lst):
            if p.shape != t.shape or any(s != 1 and a != b for s, a, b in zip(p.shape, p.stride(), t.stride())):
                raise RuntimeError(f"{what} must have the same sizes and strides (params {tuple(p.shape)} "
                                   f"stride {p.stride()}, other {tuple(t.shape)} stride {t.stride()})")


def _scalar_args(params, kwargs, what: str) -> None:
    for name in ("grad_scale", "found_inf"):
        t = kwargs.get(name)
        if t is None:
            continue
        if t.device != params[0].device:
            raise RuntimeError(f"{name} must be on the same GPU device as the params ({what}: {t.device} vs "
                               f"{params[0].device})")
        if t.dtype != torch.float32:
            raise RuntimeError(f"{what}: {name} is read as float32 by the kernel, got {t.dtype}")
        if name == "found_inf" and t.numel() != 1:
            raise RuntimeError(f"{what}: found_inf must have one element, got shape {tuple(t.shape)}")
    lr = kwargs.get("lr")
    if isinstance(lr, torch.Tensor) and lr.device.type != "cpu" and lr.device != params[0].device:
        raise RuntimeError(f"lr must be on the same GPU device as the params ({what})")


def _fused_sgd(func, args, kwargs):
    params, grads, bufs = args[:3]
    if not params:
        return None
    if bufs:
        if not kwargs["momentum"] > 0:
            raise RuntimeError("_fused_sgd_: momentum buffers need momentum > 0")
        _fast_path([params, grads, bufs], "params, grads and momentum_buffer_list")
    else:
        if kwargs["momentum"] != 0:
            raise RuntimeError("_fused_sgd_: momentum != 0 without momentum buffers")
        _fast_path([params, grads], "params and grads")
    _scalar_args(params, kwargs, "_fused_sgd_")
    if bufs and kwargs["is_first_step"] and kwargs.get("found_inf") is not None:
        # the kernel returns before touching anything when found_inf is set, and torch made the
        # momentum buffers with empty_like for this first step: a skipped step leaves them garbage
        # for every later step to read
        raise FusedHazard(f"_fused_sgd_: the first step (momentum buffers just made by empty_like) is given "
                          f"found_inf; where it skips the step, the buffers stay uninitialised at {_where(3)}")
    return None


def _fused_adam(func, args, kwargs):
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = args[:6]
    if not params:
        return None
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_sqs] if kwargs.get("amsgrad") else [])
    _fast_path(lists, "params, grads, exp_avgs, exp_avg_sqs" + (", max_exp_avg_sqs" if kwargs.get("amsgrad") else ""))
    if len(steps) != len(params):
        raise RuntimeError(f"{func}: {len(steps)} state_steps for {len(params)} params")
    for s in steps:  # the kernel reads each step count as one float32 on the device
        if s.device != params[0].device or s.dtype != torch.float32 or s.numel() != 1:
            raise RuntimeError(f"{func}: state_steps must be one-element float32 tensors on {params[0].device}, "
                               f"got {s.dtype} {tuple(s.shape)} on {s.device}")
    _scalar_args(params, kwargs, str(func))
    return None


_FUSED = {aten._fused_sgd_.default: _fused_sgd, aten._fused_sgd_.tensor_lr: _fused_sgd,
          aten._fused_adamw_.default: _fused_adam, aten._fused_adamw_.tensor_lr: _fused_adam,
          aten._fused_adam_.default: _fused_adam, aten._fused_adam_.tensor_lr: _fused_adam}

# copies between the devices: the one legitimate way to mix them (uploads are checked for blocking)
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._foreach_copy_.default,
           aten.lift_fresh.default, aten.lift_fresh_copy.default}


# ------------------------------------------------------------------ the dispatch mode

def _ones_like_real(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """A real CPU tensor of ones shaped and strided like ``t``: what a copy to the host reads."""
    dtype = dtype or t.dtype
    with _disable_current_modes():
        if _dense(t):
            out = torch.empty_strided(t.shape, t.stride(), dtype=dtype)
        else:
            out = torch.empty(t.shape, dtype=dtype)
        return out.fill_(1)


def _placeholder(dtype: torch.dtype):
    if dtype == torch.bool:
        return True
    return 1.0 if dtype.is_floating_point else (1 + 0j if dtype.is_complex else 1)


def _all_positions(mask: torch.Tensor) -> list[torch.Tensor]:
    """Long indices of every position of ``mask`` (a boolean index selecting everything)."""
    flat = torch.arange(mask.numel(), device=mask.device)
    out, stride = [], mask.numel()
    for size in mask.shape:
        stride //= max(size, 1)
        out.append(flat.div(max(stride, 1), rounding_mode="floor").remainder(max(size, 1)))
    return out


def _long_indices(indices):
    out = []
    for i in indices:
        if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8):
            out.extend(_all_positions(i))
        else:
            out.append(i)
    return out


def _flat(args, kwargs) -> list:
    """An aten op's arguments, tensor lists opened (they nest no deeper)."""
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            out.extend(a)
        else:
            out.append(a)
    return out


class _Mode(TorchDispatchMode):
    def __init__(self, fc: FakeCuda):
        super().__init__()
        self.fc = fc

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fc = self.fc
        flat = _flat(args, kwargs)
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        fake = any(isinstance(t, FakeTensor) for t in tensors)
        target = _device_of(kwargs.get("device"))
        on_cuda = any(t.device.type == "cuda" for t in tensors) or (target is not None and target.type == "cuda")
        gens = [fake_generator(g) or g for g in flat if isinstance(g, _REAL_GENERATOR)]
        if func in _FUSED:
            fc.fused.append(func.overloadpacket.__name__)
            fc.fused_inputs.append({k for k in ("grad_scale", "found_inf") if kwargs.get(k) is not None})
            return _FUSED[func](func, args, kwargs)
        if func is aten._local_scalar_dense.default:
            if _is_fake_cuda(args[0]):
                fc.record("item", func)
            if isinstance(args[0], FakeTensor):
                return _placeholder(args[0].dtype)
        elif func is aten.equal.default and on_cuda:
            fc.record("item", func)
            return True
        elif func is aten.is_nonzero.default and on_cuda:
            fc.record("item", func)
            return True
        elif func is aten._to_copy.default:
            src = args[0]
            if _is_fake_cuda(src) and target is not None and target.type == "cpu":
                fc.record("to-host", func)
                return _ones_like_real(src, kwargs.get("dtype"))
            if not isinstance(src, FakeTensor) and src.device.type == "cpu" and target is not None \
                    and target.type == "cuda" and not kwargs.get("non_blocking", False):
                fc.record("upload", func)
        elif func is aten.copy_.default:
            dst, src = args[0], args[1]
            nb = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            if _is_fake_cuda(src) and dst.device.type == "cpu":
                fc.record("to-host", func)
                with _disable_current_modes():
                    return dst.fill_(1) if not isinstance(dst, FakeTensor) else dst
            if _is_fake_cuda(dst) and src.device.type == "cpu" and not nb:
                fc.record("upload", func)
        elif func in (aten.nonzero.default, aten.argwhere.default) and on_cuda:
            fc.record("data-shape", func)
            x = args[0]
            return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        elif func is aten.masked_select.default and on_cuda:
            fc.record("data-shape", func)
            shape = torch.broadcast_shapes(args[0].shape, args[1].shape)
            return torch.empty((math.prod(shape),), dtype=args[0].dtype, device=args[0].device)
        elif func in (aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
                      aten._unique.default) and on_cuda:
            fc.record("data-shape", func)
            x = args[0]
            values = torch.empty((x.numel(),), dtype=x.dtype, device=x.device)
            inverse = torch.empty(x.shape, dtype=torch.long, device=x.device)
            counts = torch.empty((x.numel(),), dtype=torch.long, device=x.device)
            return (values, inverse) if func is aten._unique.default else (values, inverse, counts)
        elif func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                      aten._index_put_impl_.default) and on_cuda:
            indices = args[1]
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                fc.record("data-shape", f"{func} with a boolean mask")
                args = (args[0], _long_indices(indices), *args[2:])
                tensors = [t for t in _flat(args, kwargs) if isinstance(t, torch.Tensor)]
        elif func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor) and on_cuda \
                and kwargs.get("output_size") is None:
            fc.record("data-shape", func)
        elif func is aten.bincount.default and on_cuda:
            fc.record("data-shape", func)
        if not fake and not on_cuda:  # host work: real values
            for g in gens:
                if isinstance(g, FakeCudaGenerator):
                    raise DeviceMix(f"{func} runs on the CPU with a generator on {g.device} at {_where()}")
            if kwargs.get("pin_memory"):
                kwargs = {**kwargs, "pin_memory": False}
            with _disable_current_modes():
                return func(*args, **kwargs)
        if func not in _COPIES:
            self._check_mix(func, tensors)
        out_device = target or next((t.device for t in tensors), None)
        for g in gens:
            if out_device is not None and g.device.type != out_device.type:
                raise DeviceMix(f"{func} makes a {out_device.type} tensor with a generator on {g.device} at {_where()}")
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        out = func(*args, **kwargs)
        for g in gens:
            if isinstance(g, FakeCudaGenerator):
                g.advance(out.numel() if isinstance(out, torch.Tensor) else 1)
        return out

    def _check_mix(self, func, tensors) -> None:
        cuda = [t for t in tensors if t.device.type == "cuda"]
        cpu = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if cuda and cpu:
            raise DeviceMix(f"{func} mixes CPU tensors {[tuple(t.shape) for t in cpu]} with CUDA tensors "
                            f"{[tuple(t.shape) for t in cuda]} at {_where(3)}")


# ------------------------------------------------------------------ backward without autograd's engine

def _leaves(root: torch.Tensor) -> list[torch.Tensor]:
    seen, out, todo = set(), [], [root.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None:
            if var.requires_grad:
                out.append(var)
            continue
        todo.extend(n for n, _ in node.next_functions)
    return out


# ------------------------------------------------------------------ the harness

@dataclass
class FakeCuda:
    """What a :func:`fake_cuda` block recorded. ``phase`` labels the syncs made from now on."""

    syncs: list[Sync] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)   # fused optimiser kernels called, in order
    fused_inputs: list[set] = field(default_factory=list)  # which of grad_scale / found_inf each call got
    backwards: int = 0
    phase: str = "set-up"

    def record(self, kind: str, op) -> None:
        self.syncs.append(Sync(kind, str(op), _where(), self.phase))

    @contextlib.contextmanager
    def watch(self, phase: str):
        """Label the syncs of a block; yields the list of them (filled when the block ends)."""
        before, previous = len(self.syncs), self.phase
        self.phase = phase
        found: list[Sync] = []
        try:
            yield found
        finally:
            found.extend(self.syncs[before:])
            self.phase = previous

    def batches(self, iterable, label: str = "batch"):
        """``iterable``, with ``phase`` set to ``label i`` from its ``i``-th item on."""
        for i, item in enumerate(iterable):
            self.phase = f"{label} {i}"
            yield item

    def per_phase(self, syncs=None, prefix: str = "") -> dict[str, list[Sync]]:
        out: dict[str, list[Sync]] = {}
        for s in self.syncs if syncs is None else syncs:
            if s.phase.startswith(prefix):
                out.setdefault(s.phase, []).append(s)
        return out


def explain(syncs) -> str:
    return "\n".join(str(s) for s in syncs) or "no host syncs"


@contextlib.contextmanager
def fake_cuda(memory: int = 80 * GiB, available: bool = True):
    """Run the block on fake CUDA (see the module docstring); yields the :class:`FakeCuda` record.
    ``available``: ``torch.cuda.is_available()`` says True inside (code that resolves ``cuda``)."""
    fc = FakeCuda()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "Generator", Generator)
        mp.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
        mp.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        mp.setattr(torch.cuda, "mem_get_info", lambda device=None: (memory, memory))
        props = SimpleNamespace(name="fake H100", major=9, minor=0, total_memory=memory, multi_processor_count=132,
                                L2_cache_size=50 << 20, is_integrated=False)
        mp.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        try:  # timm caches the L2 size per device from those properties: not past this block
            import timm.optim._helpers as timm_helpers
            if hasattr(timm_helpers, "_L2_CACHE_SIZE"):
                mp.setattr(timm_helpers, "_L2_CACHE_SIZE", {})
        except ImportError:
            pass
        mp.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        mp.setattr(torch.Tensor, "pin_memory", lambda self, device=None: self)
        real_backward, real_tolist = torch.Tensor.backward, torch._C.TensorBase.tolist

        def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
            if not _is_fake_cuda(self):
                return real_backward(self, gradient, retain_graph, create_graph, inputs)
            if not self.requires_grad:
                raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
            if gradient is None and self.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            for leaf in inputs or _leaves(self):
                # AccumulateGrad's layout contract: a dense parameter's gradient takes its strides
                g = torch.empty_strided(leaf.shape, leaf.stride(), dtype=leaf.dtype, device=leaf.device)
                if leaf.grad is None:
                    leaf.grad = g
                else:
                    leaf.grad.add_(g)
            fc.backwards += 1

        def tolist(self):
            if not isinstance(self, FakeTensor):
                return real_tolist(self)
            if self.device.type == "cuda":
                fc.record("to-host", "Tensor.tolist")
            return real_tolist(_ones_like_real(self))

        real_swap = torch.utils.swap_tensors

        def swap_tensors(t1, t2):
            # Module._apply swaps fake parameters in place, which the fake mode's weak references
            # forbid; setting the data moves the same sizes, strides and storage
            if isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor) and type(t1) is type(t2):
                with torch.no_grad():
                    t1.data = t2.detach()
                return
            real_swap(t1, t2)

        mp.setattr(torch.utils, "swap_tensors", swap_tensors)
        mp.setattr(torch.Tensor, "backward", backward)
        mp.setattr(torch.Tensor, "tolist", tolist)
        mp.setattr(FakeTensor, "tolist", tolist)  # FakeTensor's own reads element by element
        if available:  # the fake mode itself must go on knowing CUDA is absent (no device init)
            mp.setattr(FakeTensorMode, "avoid_device_init", property(lambda self: True))
            mp.setattr(torch.cuda, "is_available", lambda: True)
        with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True), _Mode(fc):
            # Tensor.__deepcopy__ (the EMA's copy of the model) asks a fake tensor for its data pointer
            warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")
            try:
                yield fc
            finally:
                FakeTensorMode.cache_clear()  # no fake result outlives the block
