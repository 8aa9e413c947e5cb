"""Model, device and precision set-up shared by ``run`` and ``predict``; checkpoint files."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import time
import warnings
from pathlib import Path

import torch

from fastvip import atomic
from fastvip.errors import FastvipError
from fastvip.recipe import Recipe


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FastvipError("recipe asks for device=cuda but no CUDA device is available")
    return torch.device(name)


def indexed_device(device: torch.device) -> torch.device:
    """``device`` with its index: plain ``cuda`` is ``cuda:0``, the device torch allocates on until
    a process picks another (``fastvip.distributed.setup`` gives each process its indexed one).
    No CUDA call is made, so this also works where CUDA is only faked."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", 0)
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a recipe's ``amp`` on ``device`` (None = full precision)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise FastvipError("amp=fp16 needs CUDA (GradScaler); use amp=bf16 or amp=off on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


# package data of fastvip itself (where tools and docs have always found it)
MEMORY_FORMATS = Path(__file__).parent.parent / "memory_formats.json"


def measured_formats(path: Path = MEMORY_FORMATS) -> dict:
    """``benchmarks/memory_format.py``'s table: device type -> {"models": {model: {...}}, ...}."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise FastvipError(f"{path} is unreadable ({e}); restore it from git or re-run "
                           "benchmarks/memory_format.py") from None


def use_channels_last(recipe: Recipe, device: torch.device, table: dict | None = None) -> tuple[bool, str]:
    """Whether this run uses channels-last, and why (for the run log).

    ``auto`` follows the measured table for this model on this device type; a model it has
    not measured stays NCHW, since channels-last is a net loss for some (TResNet, ResNeSt).
    """
    if recipe.channels_last != "auto":
        return recipe.channels_last == "on", f"recipe says {recipe.channels_last}"
    table = measured_formats() if table is None else table
    entry = table.get(device.type, {}).get("models", {}).get(recipe.model)
    if entry is None:
        return False, f"auto: {recipe.model} not measured on {device.type} (benchmarks/memory_format.py), NCHW"
    ratio = entry["channels_last_img_per_s"] / entry["nchw_img_per_s"]
    return bool(entry["channels_last"]), f"auto: measured {ratio:.2f}x NCHW's speed on {device.type}"


def amp_name(dtype: torch.dtype | None) -> str:
    """``bfloat16`` / ``float16`` / ``off``: an autocast dtype as logs and benchmark rows record it."""
    return str(dtype).replace("torch.", "") if dtype else "off"


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_model(recipe: Recipe, num_classes: int) -> torch.nn.Module:
    """The recipe's :class:`fastvip.methods.net.Net`: a timm model from scratch plus the heads it asks for."""
    from fastvip.methods.net import build_net
    return build_net(recipe.model, num_classes, drop_rate=recipe.drop_rate, drop_path_rate=recipe.drop_path_rate,
                     arcface_scale=recipe.arcface_scale if recipe.arcface else None,
                     aux_stage=recipe.aux_stage if recipe.aux_weight > 0 else None,
                     fusion_weight=recipe.fusion_weight)


# A checkpoint is torch's zip file followed by a trailer: MAGIC, the SHA-256 of every byte before
# the trailer, and their count. torch.load reads through the trailer (a zip is found from its
# end record, which stays within the last 64 KiB); torch.load alone checks none of the zip's CRCs.
DIGEST_MAGIC = b"FASTVIP-SHA256\x00\x01"
TRAILER_SIZE = len(DIGEST_MAGIC) + 32 + 8


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` with a digest trailer, through a temp file + rename: the previous file stays
    usable until then, and file and digest appear together."""
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)
        digest, size = _sha256(tmp)
        with open(tmp, "ab") as f:
            f.write(DIGEST_MAGIC + digest + size.to_bytes(8, "little"))
        # Fault-injection hook for the kill-during-checkpoint test: hold the written temp
        # file before the rename so a test can kill the run exactly there.
        delay = float(os.environ.get("FASTVIP_TEST_CHECKPOINT_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)


def _sha256(path: Path, size: int | None = None) -> tuple[bytes, int]:
    """The SHA-256 of a file's first ``size`` bytes (all of them by default), and that size."""
    h, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while size is None or done < size:
            chunk = f.read(1 << 22 if size is None else min(1 << 22, size - done))
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
    return h.digest(), done


def checkpoint_digest(path: Path) -> str | None:
    """The checkpoint's recorded SHA-256 (hex) once its bytes are checked against it; None for a
    file written before checkpoints carried one (then its zip's CRC-32s are checked instead).
    Damage is a :class:`DamagedCheckpoint` naming the file and what else there is."""
    path = Path(path)
    try:
        total = path.stat().st_size
    except OSError as e:
        raise FastvipError(f"{path} is not a readable checkpoint: {e.strerror}") from None
    trailer = b""
    if total >= TRAILER_SIZE:
        with open(path, "rb") as f:
            f.seek(total - TRAILER_SIZE)
            trailer = f.read(TRAILER_SIZE)
    if not trailer.startswith(DIGEST_MAGIC):
        _check_zip_crcs(path)
        return None
    want, size = trailer[len(DIGEST_MAGIC):-8], int.from_bytes(trailer[-8:], "little")
    if size != total - TRAILER_SIZE:
        raise DamagedCheckpoint(path, f"{total - TRAILER_SIZE} bytes where its digest counts {size}")
    got, _ = _sha256(path, size)
    if got != want:
        raise DamagedCheckpoint(path, "its bytes do not match the SHA-256 written with them")
    return want.hex()


def file_digest(path: Path) -> str:
    """A checkpoint's SHA-256 (hex), checked: the recorded one, or computed for older files."""
    return checkpoint_digest(path) or _sha256(Path(path))[0].hex()


def _check_zip_crcs(path: Path) -> None:
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DamagedCheckpoint(path, f"not a zip file as torch writes ({e})", "is not a readable checkpoint") from None
    if bad is not None:
        raise DamagedCheckpoint(path, f"the CRC-32 of its record {bad} does not match")


class DamagedCheckpoint(FastvipError):
    """A checkpoint whose bytes are not the ones written: one line naming it and the alternatives."""

    def __init__(self, path: Path, why: str, lead: str = "is damaged"):
        others = sorted(p.name for p in Path(path).parent.glob("*.pt") if p.name != Path(path).name)
        where = f" ({', '.join(others)} beside it)" if others else ""
        super().__init__(f"{path} {lead}: {why}; use another checkpoint{where}, "
                         f"`fastvip verify` checks them")


TRUST_ENV = "FASTVIP_TRUST_CHECKPOINTS"


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint without executing anything in it (``torch.load(weights_only=True)``:
    tensors and plain Python values only). A file that needs more (a checkpoint of an older fastvip
    kept numpy RNG state as an array; or a crafted file) is a one-line error; with
    ``FASTVIP_TRUST_CHECKPOINTS=1`` a file you trust is read the unsafe way, with a warning."""
    trusted = os.environ.get(TRUST_ENV, "") not in ("", "0")
    checkpoint_digest(path)  # damage is an error before anything is unpickled
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle at all, or a broken one
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise FastvipError(f"{path} is not a readable checkpoint: UnpicklingError: {first}") from None
        raise FastvipError(f"{path} holds objects other than tensors and plain values"
                           f" ({found.group(1)}), and loading them could run code; "
                           f"if you trust the file (an older fastvip checkpoint), set {TRUST_ENV}=1") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise FastvipError(f"{path} is not a readable checkpoint: {type(e).__name__}: {e}") from None
    if trusted:
        warnings.warn(f"{TRUST_ENV}=1: {path} was read with full unpickling (it can run code)", stacklevel=2)
    if not isinstance(ckpt, dict) or not ({"model", "inference"} & ckpt.keys()):
        raise FastvipError(f"{path} is not a fastvip checkpoint")
    return ckpt


def find_weights(run_or_ckpt: str | Path, which: str = "best") -> Path:
    """A run directory (-> its best.pt / last.pt) or a checkpoint file."""
    p = Path(run_or_ckpt)
    if p.is_dir():
        ckpt = p / f"{which}.pt"
        if not ckpt.is_file():
            raise FastvipError(f"{p} has no {which}.pt (is it a fastvip run directory that "
                               "finished at least one epoch?)")
        return ckpt
    if p.is_file():
        return p
    raise FastvipError(f"{p} is neither a run directory nor a checkpoint file")


def inference_weights(ckpt: dict) -> tuple[dict, str]:
    """The weights a checkpoint recommends for inference and which they are ("raw" / "ema")."""
    which = ckpt.get("weights", "raw")
    if "inference" in ckpt:
        return ckpt["inference"], which
    return ckpt["model"], "raw"
