"""What users see: progress (TTY and not), quiet mode, help, plots, run summaries."""
import os
import pty
import re
import select
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO
from fastvip.recipe import field_names

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def fastvip(*args, env):
    return subprocess.run([sys.executable, "-m", "fastvip", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


def _in_pty(args, env, timeout=300):
    """Run the CLI on a pseudo-terminal, as a user at a shell would; returns (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "fastvip", *map(str, args)], dict(env, COLUMNS="120"))
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            os.kill(pid, 9)
            raise AssertionError("no output from the pty")
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def two_runs(colour_data, tmp_path_factory):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    root = tmp_path_factory.mktemp("ux")
    outs = {}
    for name, extra in (("a", ["ema=true", "ema_decay=0.9"]), ("b", ["lr=0.1"])):
        p = fastvip("run", "recipes/tresnet_xl.py", "--out", root / name, "--set", "model=test_resnet",
                    "epochs=2", "image_size=24", "batch_size=16", "lr=0.4", "crop_scale_min=0.3", "workers=2",
                    f"train_data={colour_data['train']}", f"val_data={colour_data['val']}", *extra, env=env)
        assert p.returncode == 0, p.stderr
        outs[name] = p
    return root, outs, env


def test_run_output_plain_lines_and_summary(two_runs):
    root, outs, _ = two_runs
    out = outs["a"].stdout
    assert not ANSI.search(out) and "\r" not in out
    assert re.search(r"^epoch 2/2  loss \d+\.\d+  val_top1 \d+\.\d+  ema \d+\.\d+  24 px  lr \S+  [\d,]+ img/s$", out, re.M)
    for key in ("best_top1", "best_epoch", "wall_time_s", "img_per_s"):
        assert re.search(rf"^  {key}: \S+", out, re.M), key
    assert (root / "a" / "plots" / "curves.png").stat().st_size > 10_000


def test_plot_overlays_runs_with_expected_series(two_runs, tmp_path):
    from fastvip.train.plot import plot_runs
    root, _, env = two_runs
    drawn = plot_runs([root / "a", root / "b"], tmp_path / "c.png")
    assert drawn["train loss"] == ["a", "b"]
    assert drawn["val top-1 (%)"] == ["a (raw)", "a (EMA)", "b (raw)"]  # b has no EMA
    assert drawn["learning rate"] == ["a", "b"] and drawn["train img/s"] == ["a", "b"]
    img = Image.open(tmp_path / "c.png")
    assert img.format == "PNG" and img.size == (1100, 700)
    p = fastvip("plot", root / "a", root / "b", "--out", tmp_path / "cli.png", env=env)
    assert p.returncode == 0 and (tmp_path / "cli.png").stat().st_size > 10_000
    p = fastvip("plot", tmp_path, env=env)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "no metrics.jsonl" in p.stderr


def test_quiet_run_prints_only_the_summary(colour_data, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p = fastvip("run", "recipes/tresnet_xl.py", "--quiet", "--out", tmp_path / "q", "--set", "model=test_resnet",
                "epochs=1", "image_size=24", "batch_size=16", "workers=2", "val_data=", f"train_data={colour_data['train']}",
                env=env)
    assert p.returncode == 0, p.stderr
    assert "epoch 1/1" not in p.stdout and "run:" not in p.stdout and "run summary" in p.stdout


def test_progress_bars_on_a_terminal(colour_data, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TERM="xterm")
    src = colour_data["root"] / "src" / "val"
    code, out = _in_pty(["pack", src, tmp_path / "t.beton"], env)
    assert code == 0, out
    assert ANSI.search(out)  # rich drew on the terminal
    text = ANSI.sub("", out)
    assert "transcode" in text and "img/s" in text and "48/48" in text and "pack summary" in text


def test_help_covers_every_recipe_field_and_option_defaults(cpu_env):
    p = fastvip("run", "--help", env=cpu_env)
    assert p.returncode == 0
    epilog = p.stdout.split("recipe fields (override")[1]
    for name in field_names():
        assert re.search(rf"^  {name} \(", epilog, re.M), name
    p = fastvip("pack", "--help", env=cpu_env)
    for option, default in (("--max-side", "512"), ("--quality", "90"), ("--workers", "0")):
        assert re.search(rf"{option} \S+\s+.*\(default: {default}\)", p.stdout), option
    p = fastvip("--help", env=cpu_env)
    for cmd in ("pack", "run", "predict", "score", "show", "plot", "recipes"):
        assert re.search(rf"^    {cmd}\s", p.stdout, re.M), cmd


def test_predict_and_pack_plain_output(two_runs, colour_data, tmp_path):
    root, _, env = two_runs
    p = fastvip("predict", root / "a", colour_data["val"], env=env)
    assert p.returncode == 0 and not ANSI.search(p.stdout)
    assert re.search(r"^predict: 48 images at [\d,]+ img/s", p.stdout, re.M)
    assert re.search(r"^top1 \d+\.\d\d% on 48 images$", p.stdout, re.M)
    p = fastvip("pack", colour_data["root"] / "src" / "val", tmp_path / "v.beton", env=env)
    assert p.returncode == 0 and not ANSI.search(p.stdout) and "pack summary" in p.stdout
