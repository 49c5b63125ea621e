"""The command line, end to end, in smoke mode: what it prints, what it saves, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_lesson import cli
from mnist_lesson.config import BUDGET, TARGET
from mnist_lesson.models import MODELS, get_model
from mnist_lesson.recipes import get_recipe
from mnist_lesson.runs import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, smoke: str = "1", timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MNIST_LESSON_SMOKE=smoke)
    return subprocess.run([sys.executable, "-m", "mnist_lesson", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_in_process(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   smoke: str = "1") -> subprocess.CompletedProcess[str]:
    """`cli.main(args)` in this process (no interpreter start: fast), as a finished process would report it."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MNIST_LESSON_SMOKE", smoke)
    capsys.readouterr()
    try:
        status = cli.main(list(args))
    except SystemExit as exc:  # argparse's own errors
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["mnist_lesson", *args], status, out, err)


def one_error_line(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The run failed with `status` and said why in one line, without a traceback; return that line."""
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if "error" in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.slow  # trains in a subprocess
def test_train_final_prints_params_progress_accuracy_time_and_verdict(tmp_path: Path, mnist_root: Path) -> None:
    done = run_cli("train", "final", "--root", str(mnist_root), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "model final: 18,152 parameters" in done.stdout
    assert "epoch  1/1: train loss" in done.stdout and "test loss" in done.stdout
    assert "epoch 1/1" in done.stdout  # the progress bar: text on stdout, in a terminal and in notebooks alike
    assert "wall time" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == (f"verdict: 18,152 parameters < {BUDGET:,} (budget met); accuracy "
                                                    "not judged (smoke run of 1 short epoch)")
    (run,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run.iterdir()} == {"model.pt", "history.json", "curves.png"}
    history = json.loads((run / "history.json").read_text())
    assert history["meta"]["model"] == "final" and history["meta"]["params"] == 18_152
    assert len(history["epochs"]) == 1 and history["meta"]["code"]
    model = load_checkpoint(get_model("final"), run / "model.pt").eval()
    assert isinstance(model(torch.zeros(1, 1, 28, 28)), torch.Tensor)


def test_the_verdict_line_judges_budget_and_every_last_epoch() -> None:
    good = cli.verdict("final", 18_152, [99.0, TARGET, 99.5, 99.45], 4, smoke=False)
    assert good.endswith("every one >= 99.40% (target met)") and "(budget met)" in good
    dip = cli.verdict("final", 18_152, [99.5, 99.39, 99.5], 3, smoke=False)
    assert dip.endswith("NOT every one >= 99.40% (target NOT met)")
    assert "(budget NOT met)" in cli.verdict("first", 1_199_882, [99.0] * 3, 3, smoke=False)
    assert "< 5,000 (budget met)" in cli.verdict("under5k", 4_832, [99.0] * 3, 3, smoke=False)
    too_long = cli.verdict("assignment", 13_816, [99.5] * 19, 19, smoke=False)
    assert too_long.endswith("every one >= 99.40%; the claim allows at most 15 epochs (target NOT met)")


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "resnet"], "no model named 'resnet'; registered models: assignment, first"),
    (["train", "final", "--epochs", "0"], "expected a whole number of at least 1, got '0'"),
    (["train", "final", "--epochs", "2.5"], "expected a whole number of at least 1, got '2.5'"),
    (["train", "final", "--batch-size", "-3"], "expected a whole number of at least 1"),
    (["train", "final", "--lr", "nan"], "expected a finite number greater than 0, got 'nan'"),
    (["train", "final", "--lr", "inf"], "expected a finite number greater than 0, got 'inf'"),
    (["train", "final", "--lr", "-0.1"], "expected a finite number greater than 0"),
    (["train", "final", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "final", "--root", "/etc/hostname/x"], "/etc/hostname is a file"),
    (["train", "final", "--root", "/proc/mnist"], "/proc"),
    (["data", "--root", "/sys/mnist"], "/sys"),
    (["student", "--source", "no/such/notebook.ipynb"], "no/such/notebook.ipynb does not exist"),
    (["grade", "no-such-folder"], "no-such-folder is not a folder of .ipynb submissions"),
    (["grade", ".", "--timeout", "0"], "expected a finite number greater than 0"),
    (["summary", "final", "--limit", "0"], "expected a whole number of at least 1"),
])
def test_bad_arguments_give_one_line_and_status_2(tmp_path: Path, args: list[str], expected: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "runs")] if args[0] == "train" else []
    done = run_in_process(*args, *out, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert expected in one_error_line(done)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_real_command_exits_2_with_one_line(tmp_path: Path) -> None:
    """The same through `python -m mnist_lesson`, as a user types it (the cases above run in this process)."""
    done = run_cli("train", "resnet", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert "no model named 'resnet'" in one_error_line(done)
    assert not (tmp_path / "runs").exists()


def test_cuda_asked_for_without_one_names_the_alternatives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    done = run_in_process("train", "final", "--device", "cuda", "--out", str(tmp_path / "runs"), cwd=tmp_path,
                          monkeypatch=monkeypatch, capsys=capsys)
    assert "'cuda' is not available on this machine; available: auto, cpu" in one_error_line(done)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("where", ["under-proc", "under-a-file", "is-a-file"])
def test_an_unusable_out_folder_gives_one_line_and_leaves_nothing(tmp_path: Path, mnist_root: Path, where: str,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"under-proc": "/proc/runs", "under-a-file": str(afile / "runs"), "is-a-file": str(afile)}[where]
    done = run_in_process("train", "final", "--root", str(mnist_root), "--out", out, cwd=tmp_path,
                          monkeypatch=monkeypatch, capsys=capsys)
    assert "cannot create a run folder in" in one_error_line(done)
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_unknown_smoke_value_is_refused(tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    done = run_in_process("train", "final", "--root", str(mnist_root), "--out", str(tmp_path / "runs"),
                          cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys, smoke="sometimes")
    assert "MNIST_LESSON_SMOKE='sometimes' is not understood" in one_error_line(done)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow  # trains in a subprocess
def test_ctrl_c_keeps_the_finished_epochs(tmp_path: Path, mnist_root: Path) -> None:
    """Interrupted in its second epoch, `train` says where the partial run is and saves the first epoch."""
    env = dict(os.environ, MNIST_LESSON_SMOKE="0")
    command = [sys.executable, "-c", (
        "import signal, sys; from mnist_lesson import cli, runs\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with it ignored\n"
        "from mnist_lesson.config import Limits\n"
        "runs.limits_for = lambda smoke: Limits(train_batches=40, eval_batches=1)  # short epochs for the test\n"
        "sys.exit(cli.main(sys.argv[1:]))"),
        "train", "assignment", "--epochs", "50", "--root", str(mnist_root), "--out", str(tmp_path / "runs")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    for line in process.stdout:  # the first epoch's line comes when it has finished, however slow the machine
        if line.startswith("epoch  1/50"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    (run,) = (tmp_path / "runs").iterdir()
    history = json.loads((run / "history.json").read_text())
    assert len(history["epochs"]) >= 1 and history["meta"]["stopped"].startswith("interrupted (during epoch")
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and str(run / "history.json") in stopped[0] and "Traceback" not in err
    assert (run / "model.pt").exists()


@pytest.mark.slow  # trains in a subprocess
def test_a_diverging_run_stops_with_one_line_and_valid_json(tmp_path: Path, mnist_root: Path) -> None:
    done = run_cli("train", "first", "--lr", "1e6", "--root", str(mnist_root), "--out", str(tmp_path / "runs"),
                   cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "training diverged; lower the learning rate" in done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    history = json.loads((run / "history.json").read_text())  # strict JSON: a NaN would not parse back here
    assert history["epochs"] == [] and "diverged" in history["meta"]["stopped"]


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the project's own usage errors become one-line messages; anything else is a bug and says where."""
    monkeypatch.setattr(cli, "_list", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["list"])


def test_list_shows_every_registered_model_with_its_parameters_and_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    header, *rows = [cells(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert header == ["model", "parameters", "epochs", "batch", "schedule", "peak lr", "augmentation", "weight average"]
    assert [row[0] for row in rows] == list(MODELS)
    by_name = {row[0]: row[1:] for row in rows}
    # Written out by hand from the recipes (notebooks 01, 07 and 08), not computed the way `list` computes them.
    assert by_name["first"] == ["1,199,882", "1", "128", "constant", "0.01", "none", "none"]
    assert by_name["final"] == ["18,152", "15", "64", "onecycle", "0.1", "rotation 7, shift 0.1", "none"]
    assert by_name["under5k"] == ["4,832", "15", "32", "onecycle", "0.1", "rotation 7, shift 0.05", "decay 0.999"]
    for name, row in by_name.items():
        recipe = get_recipe(name)
        assert row[0] == f"{sum(p.numel() for p in get_model(name).parameters()):,}"
        assert row[1:5] == [str(recipe.epochs), str(recipe.batch_size), recipe.schedule, f"{recipe.lr:g}"]
        assert (row[6] == "none") == (recipe.ema == 0) and (row[5] == "none") == (not recipe.augment.active)


def cells(line: str) -> list[str]:
    """The cells of one row of a plain-text table (columns are separated by two or more spaces)."""
    import re

    return re.split(r"\s{2,}", line.strip())


def test_summary_prints_layer_table_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["summary", "assignment"]) == 0
    lines = capsys.readouterr().out.splitlines()
    gap = next(line for line in lines if cells(line)[1:2] == ["gap"])
    assert cells(gap) == ["33", "gap", "AvgPool2d", "16x1x1", "32", "10", "0", "<- RF reaches 28x28"]
    conv1 = next(line for line in lines if cells(line)[:1] == ["conv1"])
    assert cells(conv1) == ["conv1", "4,776", "34.6%"]
    assert "Final receptive field 32x32 covers the 28x28 input" in lines
    assert lines[-1] == "Budget < 20,000: under budget by 6,184"
    assert cli.main(["summary", "assignment", "--limit", "10000"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "Budget < 10,000: OVER budget by 3,817 (remove at least that many)"


def test_colab_check_and_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import nbformat

    from mnist_lesson.colab import REPOSITORY, badge

    copy = tmp_path / "03_transitions.ipynb"
    shutil.copy(REPO / "notebooks" / "03_transitions.ipynb", copy)
    assert cli.main(["colab", "--folder", str(tmp_path)]) == 0
    assert f"1 notebooks point at {REPOSITORY}" in capsys.readouterr().out
    # A fork's stale address: the check names the notebook, --sync repairs badge and setup cell.
    nb = nbformat.read(copy, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace(REPOSITORY, "someone/old-fork")
    nb.cells[1].source = nb.cells[1].source.replace(REPOSITORY, "someone/old-fork")
    nbformat.write(nb, copy)
    assert cli.main(["colab", "--folder", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "03_transitions.ipynb: the first cell (or a badge cell after it) lacks the badge" in out
    assert "setup cell" in out
    assert cli.main(["colab", "--sync", "--folder", str(tmp_path)]) == 0
    assert badge(copy.name) in nbformat.read(copy, as_version=4).cells[0].source
    assert cli.main(["colab", "--folder", str(tmp_path)]) == 0


def test_grade_and_student_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from mnist_lesson.grading.exercises import EXERCISES

    submissions = tmp_path / "subs"
    submissions.mkdir()
    (submissions / "zoe.ipynb").write_text("{")
    out = tmp_path / "grades.csv"
    assert cli.main(["grade", str(submissions), "--out", str(out), "--timeout", "600"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] grading zoe (0 left after this one)" in printed and "graded 1 notebook(s)" in printed
    with open(out, newline="") as f:
        assert [row["student"] for row in csv.DictReader(f)] == ["zoe"] * (len(EXERCISES) + 1)
    target = tmp_path / "student.ipynb"
    assert cli.main(["student", "--source", str(REPO / "instructor" / "exercises.ipynb"), "--out", str(target)]) == 0
    assert "BEGIN SOLUTION" not in target.read_text() and "colab-badge.svg" in target.read_text()
