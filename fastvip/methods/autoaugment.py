"""Per-sample AutoAugment / RandAugment / RandomErasing on whole batches on the training device.

Every sample draws its own parameters from one ``torch.Generator``; samples that
end up with the same (op, magnitude, sign) are then pushed through torchvision's
tensor kernels as one batch, so results match torchvision's per-image transforms
bit for bit while the Python loop runs over groups, never over images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2
from torchvision.transforms import _functional_tensor as _Ft
from torchvision.transforms.functional import _get_inverse_affine_matrix

from fastvip.recipe import AUGMENTS

__all__ = ["AUGMENT_KINDS", "POLICIES", "augment_batch", "auto_augment", "rand_augment", "random_erasing"]

# torchvision 0.29 AutoAugmentPolicy.IMAGENET: ((op, probability, magnitude bin or None), ...) x 25
POLICIES: dict[str, tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
}

AUGMENT_KINDS = AUGMENTS  # the recipe field's values

# AutoAugment's op space in torchvision's dict order; RandAugment's adds Identity first and drops Invert
_AA_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
           "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
_RA_OPS = ("Identity",) + _AA_OPS[:-1]


def _augmentation_space(num_bins: int, image_size: tuple[int, int]) -> dict[str, tuple[torch.Tensor, bool]]:
    """torchvision's ``_augmentation_space`` (same float32 tables) as op -> (magnitudes, signed)."""
    return {
        "Identity": (torch.tensor(0.0), False),
        "ShearX": (torch.linspace(0.0, 0.3, num_bins), True),
        "ShearY": (torch.linspace(0.0, 0.3, num_bins), True),
        "TranslateX": (torch.linspace(0.0, 150.0 / 331.0 * image_size[1], num_bins), True),
        "TranslateY": (torch.linspace(0.0, 150.0 / 331.0 * image_size[0], num_bins), True),
        "Rotate": (torch.linspace(0.0, 30.0, num_bins), True),
        "Brightness": (torch.linspace(0.0, 0.9, num_bins), True),
        "Color": (torch.linspace(0.0, 0.9, num_bins), True),
        "Contrast": (torch.linspace(0.0, 0.9, num_bins), True),
        "Sharpness": (torch.linspace(0.0, 0.9, num_bins), True),
        "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int(), False),
        "Solarize": (torch.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (torch.tensor(0.0), False),
        "Equalize": (torch.tensor(0.0), False),
        "Invert": (torch.tensor(0.0), False),
    }


def _normalize_fill(fill, channels: int) -> list[float] | None:
    # mirrors AutoAugment.forward: a scalar fill is broadcast to every channel
    if fill is None:
        return None
    if isinstance(fill, (int, float)):
        return [float(fill)] * channels
    return [float(f) for f in fill]


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small tensor built on the host, on ``device`` without a host sync: a blocking copy to a
    GPU (what ``torch.tensor(..., device=cuda)`` makes) waits for every kernel queued before it."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _geometric(images: torch.Tensor, matrix: list[float], fill) -> torch.Tensor:
    """torchvision's tensor ``affine`` / ``rotate`` (same size, NEAREST) with the sampling grid made on
    the host: torchvision builds its matrix with ``torch.tensor(..., device=img.device)``, a blocking
    upload in every step on a GPU. The grid is torchvision's own (``_gen_affine_grid``), so on the CPU
    the result is torchvision's bit for bit. (A ``fill`` still makes torchvision upload it.)"""
    h, w = images.shape[-2], images.shape[-1]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    theta = torch.tensor(matrix, dtype=dtype).reshape(1, 2, 3)
    grid = _Ft._gen_affine_grid(theta, w=w, h=h, ow=w, oh=h)
    return _Ft._apply_grid_transform(images, _on_device(grid, images.device), "nearest", fill=fill)


def _affine(images: torch.Tensor, translate, shear, center=None, fill=None) -> torch.Tensor:
    """``F.affine(images, angle=0, translate, scale=1, shear, NEAREST, fill, center)`` (its argument
    handling for these ops) through :func:`_geometric`."""
    h, w = images.shape[-2], images.shape[-1]
    center_f = [0.0, 0.0] if center is None else [1.0 * (c - s * 0.5) for c, s in zip(center, [w, h])]
    matrix = _get_inverse_affine_matrix(center_f, 0.0, [1.0 * t for t in translate], 1.0, list(shear))
    return _geometric(images, matrix, fill)


def _sharpness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """``F.adjust_sharpness`` with its 3x3 kernel made on the host (torchvision sets its centre with
    ``kernel[1, 1] = 5.0`` on the device: a blocking one-element upload)."""
    if images.size(-1) <= 2 or images.size(-2) <= 2:
        return images
    dtype = images.dtype if images.is_floating_point() else torch.float32
    kernel = torch.ones((3, 3), dtype=dtype)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    kernel = _on_device(kernel, images.device).expand(images.shape[-3], 1, 3, 3)
    blurred, need_cast, need_squeeze, out_dtype = _Ft._cast_squeeze_in(images, [kernel.dtype])
    blurred = torch.nn.functional.conv2d(blurred, kernel, groups=blurred.shape[-3])
    blurred = _Ft._cast_squeeze_out(blurred, need_cast, need_squeeze, out_dtype)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = blurred
    return _Ft._blend(images, degenerate, factor)


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    """``F.autocontrast`` with ``torch.where`` for its boolean-mask stores (``minimum[mask] = 0``:
    a ``nonzero``, so a host sync, on a GPU). The same values."""
    bound = _Ft._max_value(images.dtype)
    dtype = images.dtype if images.is_floating_point() else torch.float32
    minimum = images.amin(dim=(-2, -1), keepdim=True).to(dtype)
    maximum = images.amax(dim=(-2, -1), keepdim=True).to(dtype)
    scale = bound / (maximum - minimum)
    flat = torch.isfinite(scale).logical_not()
    minimum = torch.where(flat, torch.zeros_like(minimum), minimum)
    scale = torch.where(flat, torch.ones_like(scale), scale)
    return ((images - minimum) * scale).clamp(0, bound).to(images.dtype)


def _apply(images: torch.Tensor, op_name: str, magnitude: float,
           fill: list[float] | None = None) -> torch.Tensor:
    """torchvision ``_apply_op`` (NEAREST) on a whole batch that shares one op and magnitude.

    The geometric ops, Sharpness and AutoContrast are torchvision's tensor kernels rewritten only
    where those make a GPU wait for the host (see :func:`_geometric`); the results are the same."""
    if op_name == "ShearX":
        # torchvision shears by atan(magnitude) degrees about the top-left corner
        return _affine(images, [0, 0], [math.degrees(math.atan(magnitude)), 0.0], center=[0, 0], fill=fill)
    if op_name == "ShearY":
        return _affine(images, [0, 0], [0.0, math.degrees(math.atan(magnitude))], center=[0, 0], fill=fill)
    if op_name == "TranslateX":
        return _affine(images, [int(magnitude), 0], [0.0, 0.0], fill=fill)
    if op_name == "TranslateY":
        return _affine(images, [0, int(magnitude)], [0.0, 0.0], fill=fill)
    if op_name == "Rotate":
        # F.rotate: the inverse matrix of -angle about the centre
        return _geometric(images, _get_inverse_affine_matrix([0.0, 0.0], -magnitude, [0.0, 0.0], 1.0, [0.0, 0.0]),
                          fill)
    if op_name == "Brightness":
        return F.adjust_brightness(images, 1.0 + magnitude)
    if op_name == "Color":
        return F.adjust_saturation(images, 1.0 + magnitude)
    if op_name == "Contrast":
        return F.adjust_contrast(images, 1.0 + magnitude)
    if op_name == "Sharpness":
        return _sharpness(images, 1.0 + magnitude)
    if op_name == "Posterize":
        return F.posterize(images, int(magnitude))
    if op_name == "Solarize":
        return F.solarize(images, magnitude)
    if op_name == "AutoContrast":
        return _autocontrast(images)
    if op_name == "Equalize":
        # v1 equalize loops over images in Python; the v2 kernel is vectorised and computes the same LUT
        return F2.equalize_image(images)
    if op_name == "Invert":
        return F.invert(images)
    if op_name == "Identity":
        return images
    raise ValueError(f"unknown augmentation op {op_name!r}")


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"expected a uint8 (N, C, H, W) batch, got {images.dtype} {tuple(images.shape)}")


def _like_input(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    # torchvision kernels and torch.where may hand back either layout; the model expects the input's
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _apply_grouped(out: torch.Tensor, ops: Sequence[str], op_idx: torch.Tensor, bins: torch.Tensor,
                   negative: torch.Tensor, space: dict[str, tuple[torch.Tensor, bool]],
                   fill: list[float] | None) -> None:
    """Apply one op slot to ``out`` in place: sample i gets ``ops[op_idx[i]]`` at bin ``bins[i]`` (-1: no
    magnitude), negated where ``negative[i]``; ``op_idx[i] < 0`` leaves it alone. Indices are on the CPU."""
    n_bins = int(bins.max().item()) + 2 if bins.numel() else 1
    keep = op_idx >= 0
    keys = (op_idx.clamp(min=0) * n_bins + bins + 1) * 2 + negative.long()
    keys = torch.where(keep, keys, torch.full_like(keys, -1))
    # groups are disjoint, so each one can read from and write back into the same tensor
    for key in torch.unique(keys[keep]).tolist():
        op_name = ops[key // 2 // n_bins]
        if op_name == "Identity":
            continue
        bin_ = key // 2 % n_bins - 1
        magnitudes = space[op_name][0]
        magnitude = float(magnitudes[bin_].item()) if bin_ >= 0 and magnitudes.ndim > 0 else 0.0
        if key % 2:
            magnitude = -magnitude
        idx = torch.nonzero(keys == key).flatten()  # on the host: the draws are host-side
        idx = idx.pin_memory().to(out.device, non_blocking=True) if out.is_cuda else idx.to(out.device)
        out.index_copy_(0, idx, _apply(out.index_select(0, idx), op_name, magnitude, fill))


def _policy(policy: str):
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown AutoAugment policy {policy!r}; choices: {sorted(POLICIES)}") from None


def _draw_autoaugment(n: int, generator: torch.Generator,
                      policy: str = "imagenet") -> dict[str, torch.Tensor]:
    """Per-sample AutoAugment draws (``AutoAugment.get_params`` for each sample), on the CPU.

    ``policy_id`` (n,), ``probs`` (n, 2) and ``signs`` (n, 2), in torchvision's meaning: op ``j`` applies when
    ``probs[:, j] <= p`` and a signed magnitude is negated where ``signs[:, j] == 0``.
    """
    policies = _policy(policy)
    dev = generator.device
    policy_id = torch.randint(len(policies), (n,), generator=generator, device=dev)
    probs = torch.rand((n, 2), generator=generator, device=dev)
    signs = torch.randint(2, (n, 2), generator=generator, device=dev)
    return {"policy_id": policy_id.cpu(), "probs": probs.cpu(), "signs": signs.cpu()}


def auto_augment(images: torch.Tensor, generator: torch.Generator, policy: str = "imagenet",
                 fill=None) -> torch.Tensor:
    """torchvision ``AutoAugment(policy)`` with NEAREST interpolation, drawn independently per sample."""
    _check_images(images)
    policies = _policy(policy)
    n, c, h, w = images.shape
    draws = _draw_autoaugment(n, generator, policy)
    space = _augmentation_space(10, (h, w))
    fill = _normalize_fill(fill, c)
    signed = torch.tensor([space[o][1] for o in _AA_OPS])
    out = images.clone()
    for slot in range(2):
        entries = [p[slot] for p in policies]
        op_tab = torch.tensor([_AA_OPS.index(e[0]) for e in entries])
        p_tab = torch.tensor([e[1] for e in entries], dtype=draws["probs"].dtype)
        bin_tab = torch.tensor([-1 if e[2] is None else e[2] for e in entries])
        pid = draws["policy_id"]
        op_idx = op_tab[pid]
        applied = draws["probs"][:, slot] <= p_tab[pid]
        negative = signed[op_idx] & (draws["signs"][:, slot] == 0)
        op_idx = torch.where(applied, op_idx, torch.full_like(op_idx, -1))
        _apply_grouped(out, _AA_OPS, op_idx, bin_tab[pid], negative, space, fill)
    return _like_input(out, images)


def _draw_randaugment(n: int, generator: torch.Generator, num_ops: int = 2) -> dict[str, torch.Tensor]:
    """Per-sample RandAugment draws, on the CPU: ``op_index`` (n, num_ops) into ``_RA_OPS`` and ``signs``
    (n, num_ops); torchvision negates a signed magnitude where its sign draw is 1 (unsigned ops ignore it)."""
    dev = generator.device
    op_index = torch.randint(len(_RA_OPS), (n, num_ops), generator=generator, device=dev)
    signs = torch.randint(2, (n, num_ops), generator=generator, device=dev)
    return {"op_index": op_index.cpu(), "signs": signs.cpu()}


def rand_augment(images: torch.Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: int = 9,
                 num_magnitude_bins: int = 31, fill=None) -> torch.Tensor:
    """torchvision ``RandAugment`` (NEAREST interpolation), ops and signs drawn independently per sample."""
    _check_images(images)
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(f"magnitude {magnitude} outside [0, {num_magnitude_bins})")
    n, c, h, w = images.shape
    draws = _draw_randaugment(n, generator, num_ops)
    space = _augmentation_space(num_magnitude_bins, (h, w))
    fill = _normalize_fill(fill, c)
    signed = torch.tensor([space[o][1] for o in _RA_OPS])
    out = images.clone()
    for slot in range(num_ops):
        op_idx = draws["op_index"][:, slot]
        negative = signed[op_idx] & (draws["signs"][:, slot] == 1)
        bins = torch.full_like(op_idx, magnitude)
        _apply_grouped(out, _RA_OPS, op_idx, bins, negative, space, fill)
    return _like_input(out, images)


def _draw_erasing(n: int, height: int, width: int, generator: torch.Generator, p: float,
                  scale: tuple[float, float], ratio: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Per-sample erasing boxes as timm draws them (10 tries, first that fits), on the generator's device.

    Returns ``erase`` (n,) bool plus ``top``, ``left``, ``h``, ``w`` (n,) int64.
    """
    dev = generator.device
    tries = 10
    coin = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    area_frac = torch.rand((n, tries), generator=generator, device=dev, dtype=torch.float64)
    log_ratio = torch.rand((n, tries), generator=generator, device=dev, dtype=torch.float64)
    pos = torch.rand((n, 2), generator=generator, device=dev, dtype=torch.float64)
    target = (scale[0] + area_frac * (scale[1] - scale[0])) * (height * width)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + log_ratio * (hi - lo))
    # torch.round is round-half-to-even like Python's round() in timm
    hs = torch.sqrt(target * aspect).round().long()
    ws = torch.sqrt(target / aspect).round().long()
    fits = (ws < width) & (hs < height)
    first = fits.long().argmax(dim=1, keepdim=True)  # argmax picks the first True try
    h = hs.gather(1, first).squeeze(1)
    w = ws.gather(1, first).squeeze(1)
    erase = (coin <= p) & fits.any(dim=1)  # timm skips when random() > p
    # uniform integers in [0, H - h] like random.randint; clamp guards float rounding at the top end
    top = torch.minimum((pos[:, 0] * (height - h + 1)).floor().long(), height - h)
    left = torch.minimum((pos[:, 1] * (width - w + 1)).floor().long(), width - w)
    return {"erase": erase, "top": top, "left": left, "h": h, "w": w}


def random_erasing(x: torch.Tensor, generator: torch.Generator, p: float = 0.25, scale=(0.02, 1 / 3),
                   ratio=(0.3, 1 / 0.3), mode: str = "pixel") -> torch.Tensor:
    """timm ``RandomErasing`` (one box per image) on a normalized float (N, C, H, W) batch, out of place.

    ``scale`` and ``ratio`` are timm's (area 2-33 %, aspect 0.3 to 1/0.3); ``p`` has no timm
    default to follow (its train.py uses 0, DeiT 0.25), callers pass the recipe's.

    ``mode``: "pixel" per-pixel N(0, 1) noise, "rand" one N(0, 1) colour per channel, "const" zeros.
    """
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"unknown erasing mode {mode!r}; choices: ['const', 'pixel', 'rand']")
    if x.ndim != 4 or not x.is_floating_point():
        raise TypeError(f"expected a float (N, C, H, W) batch, got {x.dtype} with shape {tuple(x.shape)}")
    if p <= 0:
        return x
    n, c, height, width = x.shape
    boxes = _draw_erasing(n, height, width, generator, p, scale, ratio)
    boxes = {k: v.to(x.device) for k, v in boxes.items()}
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    top, left = boxes["top"].view(n, 1, 1), boxes["left"].view(n, 1, 1)
    mask = ((rows >= top) & (rows < top + boxes["h"].view(n, 1, 1))
            & (cols >= left) & (cols < left + boxes["w"].view(n, 1, 1))
            & boxes["erase"].view(n, 1, 1)).unsqueeze(1)
    if mode == "const":
        noise = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        shape = (n, c, height, width) if mode == "pixel" else (n, c, 1, 1)
        noise_gen = _generator_on(generator, x.device)
        noise = torch.randn(shape, generator=noise_gen, device=x.device, dtype=x.dtype)
    return _like_input(torch.where(mask, noise, x), x)


def _generator_on(generator: torch.Generator, device: torch.device) -> torch.Generator:
    # a full-size noise tensor drawn on a CPU generator and copied to the GPU would be slow, so a
    # device generator is seeded from the caller's generator instead (still deterministic per seed)
    if generator.device == device:
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator(device=device).manual_seed(seed)


def augment_batch(images: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """Dispatch a uint8 batch to the named augmentation; "none" hands the batch back untouched."""
    if kind == "none":
        return images
    if kind == "autoaugment":
        return auto_augment(images, generator)
    if kind == "randaugment":
        return rand_augment(images, generator)
    raise ValueError(f"unknown augmentation kind {kind!r}; choices: {list(AUGMENT_KINDS)}")
