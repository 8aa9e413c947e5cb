"""Damage that keeps a file's size and date (a bad sector, a bit flip, a partial copy) is found
on read: checkpoints by their digest (older ones by the zip's CRC-32s), with one line naming
the file; ``fastvip verify`` lists every problem."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fastvip.errors import FastvipError
from fastvip.methods.model import TRAILER_SIZE, checkpoint_digest, load_checkpoint
from fastvip.verify import verify


def _overwrite(path, offset, n=4096):
    data = bytearray(path.read_bytes())
    offset %= len(data)
    data[offset:offset + n] = bytes((b + 1) % 256 for b in data[offset:offset + n])  # every byte changed
    path.write_bytes(bytes(data))


def _tensor_offset(path) -> int:
    """Where the largest tensor's bytes start in a checkpoint (a zip of stored records)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
        return info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2


@pytest.fixture
def ckpt(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    return run_dir


def test_clean_checkpoints_carry_a_digest_that_checks(ckpt):
    for name in ("last.pt", "best.pt"):
        assert len(checkpoint_digest(ckpt / name)) == 64
    report = verify([ckpt])
    assert report.problems == [] and str(ckpt / "last.pt") in report.checked


@pytest.mark.parametrize("where", ["tensor", "zip directory", "truncated"])
def test_damaged_checkpoint_is_one_line_naming_it_everywhere(ckpt, where, cpu_env, colour_data):
    last = ckpt / "last.pt"
    if where == "tensor":
        _overwrite(last, _tensor_offset(last))
    elif where == "zip directory":
        _overwrite(last, os.path.getsize(last) - TRAILER_SIZE - 200, 64)
    else:  # copied while being written
        last.write_bytes(last.read_bytes()[: os.path.getsize(last) // 2])
    with pytest.raises(FastvipError, match=f"{last}.*(damaged|not a readable).*best.pt beside it"):
        load_checkpoint(last)
    report = verify([ckpt])
    assert len(report.problems) == 1 and str(last) in report.problems[0]
    for args in (["predict", str(last), str(colour_data["val"]), "--out", str(ckpt / "p")],
                 ["export", str(last), str(ckpt / "e")],
                 ["run", str(ckpt / "recipe.py"), "--out", str(ckpt), "--resume"],
                 ["verify", str(ckpt)]):
        proc = subprocess.run([sys.executable, "-m", "fastvip", *args], capture_output=True, text=True, env=cpu_env)
        lines = proc.stderr.strip().splitlines() + proc.stdout.strip().splitlines()
        assert proc.returncode != 0, (args, proc.stdout, proc.stderr)
        assert any(str(last) in line for line in lines) and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_checkpoints_written_before_digests_still_load_and_their_crcs_are_checked(ckpt):
    old = ckpt / "old.pt"
    old.write_bytes((ckpt / "last.pt").read_bytes()[:-TRAILER_SIZE])  # the layout of earlier versions
    assert checkpoint_digest(old) is None
    assert torch.equal(load_checkpoint(old)["model"]["head.fc.weight"] if "head.fc.weight" in
                       load_checkpoint(old)["model"] else next(iter(load_checkpoint(old)["model"].values())),
                       next(iter(load_checkpoint(ckpt / "last.pt")["model"].values())))
    _overwrite(old, _tensor_offset(old))
    with pytest.raises(FastvipError, match="old.pt is damaged: the CRC-32 of its record"):
        load_checkpoint(old)
