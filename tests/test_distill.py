"""Distillation: an ensemble of trained runs folded into one model (recipe ``teachers``)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.methods.losses import distillation_kl, teacher_probs
from fastvip.methods.model import load_checkpoint, save_checkpoint
from fastvip.methods.objective import loss_terms
from fastvip.recipe import Recipe
from fastvip.train import build_trainer, run

Q = Console(quiet=True)


def test_distillation_term_against_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teachers = [torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])]
    T = 2.0

    def softmax(z):
        e = np.exp(np.asarray(z, np.float64) / T)
        return e / e.sum(-1, keepdims=True)
    p_t = (softmax(teachers[0]) + softmax(teachers[1])) / 2
    p_s = softmax(student)
    want = T * T * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1))
    got_p = teacher_probs(teachers, T)
    np.testing.assert_allclose(got_p.numpy(), p_t, rtol=1e-6)
    assert distillation_kl(student, got_p, T).item() == pytest.approx(want, rel=1e-5)
    assert distillation_kl(teachers[0], teacher_probs(teachers[:1], T), T).item() == pytest.approx(0, abs=1e-6)

    r = Recipe(teachers=("t",), distill_weight=0.25, distill_temperature=T)
    targets = torch.eye(3)[[0, 2]]
    plain = loss_terms(Recipe(), {"logits": student}, targets, torch.tensor([0, 2]))
    terms = loss_terms(r, {"logits": student}, targets, torch.tensor([0, 2]), distill_p=got_p)
    assert terms["loss_ce"].item() == pytest.approx(0.75 * plain["loss_ce"].item())
    assert terms["loss_distill"].item() == pytest.approx(0.25 * want, rel=1e-5)


def _student(colour_data, teachers, **kw):
    base = dict(model="test_resnet", train_data=str(colour_data["train"]), val_data=str(colour_data["val"]),
                image_size=16, epochs=2, batch_size=16, lr=0.2, warmup_epochs=0.5, workers=2,
                teachers=tuple(str(t) for t in teachers), distill_weight=0.5, distill_temperature=2.0)
    return Recipe(**{**base, **kw})


def test_a_student_distils_from_a_trained_run_from_the_command_line(trained_run, colour_data, tmp_path, cpu_env):
    """1 epoch end to end: loss_distill logged, the teacher (24 px eval) sees the 16 px batch resized,
    and the student exports."""
    out = tmp_path / "student"
    cmd = [sys.executable, "-m", "fastvip", "run", "recipes/demo_digits.py", "--out", str(out), "--set",
           "model=test_resnet", f"train_data={colour_data['train']}", f"val_data={colour_data['val']}",
           "image_size=16", "epochs=1", "batch_size=16", "workers=2", "device=cpu",
           f"teachers={trained_run}", "distill_weight=0.5", "distill_temperature=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env)
    assert proc.returncode == 0, proc.stderr
    assert "teacher" in proc.stdout + proc.stderr and "resized to" in proc.stdout + proc.stderr
    epoch = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["loss_distill"] > 0 and "val_top1" in epoch
    assert json.loads((out / "recipe.json").read_text())["teachers"] == [str(trained_run)]
    proc = subprocess.run([sys.executable, "-m", "fastvip", "export", str(out), str(tmp_path / "exp")],
                          capture_output=True, text=True, env=cpu_env)
    assert proc.returncode == 0 and (tmp_path / "exp" / "model.safetensors").is_file(), proc.stderr


def test_teachers_must_exist_be_sound_and_share_the_class_list(trained_run, colour_data, tmp_path):
    with pytest.raises(FastvipError, match="teacher .*nope does not exist"):
        run(_student(colour_data, [tmp_path / "nope"]), tmp_path / "a", console=Q)
    other = tmp_path / "other.pt"
    ckpt = load_checkpoint(trained_run / "best.pt")
    ckpt["classes"] = [c + "_x" for c in ckpt["classes"]]
    save_checkpoint(other, ckpt)
    with pytest.raises(FastvipError, match=f"teacher {other} was trained on 4 classes that differ"):
        run(_student(colour_data, [other]), tmp_path / "b", console=Q)
    damaged = tmp_path / "damaged.pt"
    data = bytearray((trained_run / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(FastvipError, match=f"teacher {damaged}: .*damaged"):
        run(_student(colour_data, [damaged]), tmp_path / "c", console=Q)
    for name in "abc":
        assert not (tmp_path / name / "metrics.jsonl").exists() or \
            all(json.loads(l)["event"] != "epoch" for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines())


def test_resume_with_teachers_is_exact_and_refuses_a_changed_teacher(trained_run, colour_data, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(trained_run, teacher)
    recipe = _student(colour_data, [teacher, teacher / "last.pt"])  # two teachers: the best and last weights
    run(recipe, tmp_path / "full", console=Q)
    run(recipe, tmp_path / "cut", console=Q, stop_after=1)
    after_one = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert [t["path"] for t in after_one["teachers"]] == [str(teacher), str(teacher / "last.pt")]
    run(recipe, tmp_path / "cut", console=Q, resume=True)
    full, cut = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for name, t in full["model"].items():
        assert torch.equal(cut["model"][name], t), name
    ckpt = load_checkpoint(teacher / "best.pt")
    ckpt["inference"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["inference"].items()}
    save_checkpoint(teacher / "best.pt", ckpt)
    with pytest.raises(FastvipError, match=f"--resume: teacher {teacher} changed since the checkpoint"):
        build_trainer(recipe.validate(), torch.device("cpu"), 4, checkpoint=after_one)  # what --resume builds
