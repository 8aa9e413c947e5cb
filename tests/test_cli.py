"""The command line as a user runs it: subprocesses, exit codes, one-line errors."""
import subprocess
import sys

import pytest

from conftest import REPO
from fastvip.recipe import field_names


def fastvip(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastvip", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd or REPO, timeout=600)


def _one_line_error(p, needle):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr


def test_bad_inputs_give_one_line_errors(tmp_path, cpu_env):
    _one_line_error(fastvip("pack", tmp_path / "nope", tmp_path / "o.beton", env=cpu_env), "does not exist")
    _one_line_error(fastvip("run", "recipes/tresnet_xl.py", "--set", "epocs=2", env=cpu_env), "did you mean 'epochs'")
    _one_line_error(fastvip("run", "recipes/tresnet_xl.py", "--set", "train_data=" + str(tmp_path / "x.beton"),
                            "--out", tmp_path / "r", env=cpu_env), "does not exist")
    _one_line_error(fastvip("score", tmp_path / "a.csv", tmp_path / "b.csv", env=cpu_env), "does not exist")
    _one_line_error(fastvip("predict", tmp_path, tmp_path / "x.beton", env=cpu_env), "has no best.pt")


def test_debug_shows_traceback(tmp_path, cpu_env):
    p = fastvip("pack", tmp_path / "nope", tmp_path / "o.beton", "--debug", env=cpu_env)
    assert p.returncode != 0 and "Traceback" in p.stderr and "FastvipError" in p.stderr


def test_end_to_end_cli(colour_data, tmp_path, cpu_env):
    run_dir = tmp_path / "run"
    p = fastvip("run", "recipes/tresnet_xl.py", "--out", run_dir, "--set", "model=test_resnet", "epochs=2",
                "image_size=24", "batch_size=16", "lr=0.4", "crop_scale_min=0.3", "workers=2",
                f"train_data={colour_data['train']}", f"val_data={colour_data['val']}", env=cpu_env)
    assert p.returncode == 0, p.stderr
    assert "\x1b[" not in p.stdout  # not a TTY: no control characters
    assert "epoch 2/2" in p.stdout and "run summary" in p.stdout
    sub = tmp_path / "sub.csv"
    p = fastvip("predict", run_dir, colour_data["test"], "--submission", sub, env=cpu_env)
    assert p.returncode == 0, p.stderr
    assert sub.read_text().startswith("Image IDs,Predictions\nimg_0.JPEG,")
    p = fastvip("score", sub, sub, env=cpu_env)
    assert p.returncode == 0 and p.stdout.strip() == "top1 100.00% on 10 images"


def test_show_and_recipes(cpu_env):
    p = fastvip("show", "recipes/tresnet_xl.py", "--set", "epochs=7", env=cpu_env)
    assert p.returncode == 0 and "epochs=7," in p.stdout
    assert all(f"    {name}=" in p.stdout for name in field_names())
    p = fastvip("recipes", env=cpu_env)
    assert p.returncode == 0 and "tresnet_xl.py" in p.stdout and "DeepBlueAI" in p.stdout


@pytest.mark.parametrize("cmd", ["pack", "run", "predict", "score", "show", "recipes"])
def test_help_lists_defaults(cmd, cpu_env):
    p = fastvip(cmd, "--help", env=cpu_env)
    assert p.returncode == 0 and "--debug" in p.stdout
    if cmd == "pack":
        assert "--max-side MAX_SIDE" in p.stdout and "(default: 512)" in p.stdout
