"""The command line, end to end, in smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mnist_lesson import cli
from mnist_lesson.models import get_model
from mnist_lesson.train import load_checkpoint


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MNIST_LESSON_SMOKE="1")
    return subprocess.run([sys.executable, "-m", "mnist_lesson", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_train_seed_prints_params_and_accuracy_and_saves_a_run(tmp_path: Path, mnist_root: Path) -> None:
    done = run_cli("train", "seed", "--root", str(mnist_root), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "model seed: 13,816 parameters" in done.stdout
    assert "epoch  1/1: train loss" in done.stdout and "test loss" in done.stdout
    assert "epoch 1/1" in done.stderr  # the progress bar (text, outside a notebook)
    (run,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run.iterdir()} == {"model.pt", "history.json", "curves.png"}
    history = json.loads((run / "history.json").read_text())
    assert history["meta"]["model"] == "seed" and history["meta"]["params"] == 13_816
    assert len(history["epochs"]) == 1
    model = load_checkpoint(get_model("seed"), run / "model.pt").eval()
    assert isinstance(model(torch.zeros(1, 1, 28, 28)), torch.Tensor)


def test_unknown_model_and_bad_arguments_exit_with_a_message(tmp_path: Path) -> None:
    done = run_cli("train", "resnet", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice: 'resnet'" in done.stderr
    done = run_cli("train", "seed", "--epochs", "0", cwd=tmp_path)
    assert done.returncode == 2 and "--epochs must be at least 1" in done.stderr
    done = run_cli("train", "seed", "--device", "tpu", cwd=tmp_path)
    assert done.returncode == 2 and "unknown device 'tpu'" in done.stderr


def test_list_shows_registered_models(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["list"]) == 0
    assert "seed" in capsys.readouterr().out


def test_summary_prints_layer_table_and_budget(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["summary", "seed"]) == 0
    out = capsys.readouterr().out
    assert "33  gap        AvgPool2d    16x1x1    32    10       0  <- RF reaches 28x28" in out
    assert "Final receptive field 32x32 covers the 28x28 input" in out
    assert "conv1    4,776   34.6%" in out
    assert "Budget < 20,000: under budget by 6,184" in out
    assert cli.main(["summary", "seed", "--limit", "10000"]) == 0
    assert "OVER budget by 3,817" in capsys.readouterr().out


def test_colab_check_and_sync(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    import nbformat

    from mnist_lesson.colab import REPOSITORY, badge

    repo = Path(__file__).resolve().parents[1]
    copy = tmp_path / "03_transitions.ipynb"
    shutil.copy(repo / "notebooks" / "03_transitions.ipynb", copy)
    assert cli.main(["colab", "--folder", str(tmp_path)]) == 0
    assert f"1 notebooks point at {REPOSITORY}" in capsys.readouterr().out
    # A fork's stale address: the check names the notebook, --sync repairs badge and setup cell.
    nb = nbformat.read(copy, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace(REPOSITORY, "someone/old-fork")
    nb.cells[1].source = nb.cells[1].source.replace(REPOSITORY, "someone/old-fork")
    nbformat.write(nb, copy)
    assert cli.main(["colab", "--folder", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "03_transitions.ipynb: the first cell lacks the badge" in out and "setup cell" in out
    assert cli.main(["colab", "--sync", "--folder", str(tmp_path)]) == 0
    assert badge(copy.name) in nbformat.read(copy, as_version=4).cells[0].source
    assert cli.main(["colab", "--folder", str(tmp_path)]) == 0


def test_grade_and_student_commands(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import csv

    submissions = tmp_path / "subs"
    submissions.mkdir()
    (submissions / "zoe.ipynb").write_text("{")
    out = tmp_path / "grades.csv"
    assert cli.main(["grade", str(submissions), "--out", str(out), "--timeout", "30"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] grading zoe (0 left after this one)" in printed and "graded 1 notebook(s)" in printed
    with open(out, newline="") as f:
        assert [row["student"] for row in csv.DictReader(f)] == ["zoe"] * 7
    assert cli.main(["grade", str(tmp_path / "missing"), "--out", str(out)]) == 2
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "student.ipynb"
    assert cli.main(["student", "--source", str(repo / "notebooks" / "exercises.ipynb"), "--out", str(target)]) == 0
    assert "NotImplementedError" in target.read_text() and "BEGIN SOLUTION" not in target.read_text()
