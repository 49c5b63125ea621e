"""nbgrader round trip: the instructor's notebook is an nbgrader assignment, and nbgrader's autograder gives every
submission exactly the points that `python -m mnist_lesson grade` gives it.

A throw-away course in a temporary folder: nbgrader_config.py, source/ps1/exercises.ipynb (the instructor's
notebook), `nbgrader generate_assignment`, three submissions (every answer right, the student version handed in
unanswered, some answers right, some partly, some wrong), `nbgrader autograde`, then the same three notebooks through
`python -m mnist_lesson grade`. Each submission sets STUDENT to its nbgrader student id, and our grader keys each
notebook by its file name: both graders see the same student's numbers.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mnist_lesson.grading.exercises import EXERCISES, PRELUDE
from mnist_lesson.grading.student_notebook import BEGIN, END

pytest.importorskip("nbgrader")
pytestmark = pytest.mark.slow  # nbgrader and our grader run every notebook in kernels

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "instructor" / "exercises.ipynb"
STUDENT_NOTEBOOK = REPO / "notebooks" / "exercises.ipynb"
ASSIGNMENT = "ps1"
CONFIG = """\
c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = "mnist-lesson"
c.ClearSolutions.code_stub = {"python": ""}  # keep the `x = None` line: an unanswered check says so, no traceback
c.Execute.timeout = 600
"""

# Carol's answers: some right, some partly right, some wrong or missing. Each is an answer cell's source.
PARTLY = {
    "q01": "output_side = None\n" + "\n".join(["side = 28", "for layer in q01.numbers()['layers']:",
                                               "    if layer['kind'] == 'pool':", "        side //= 2", "    else:",
                                               "        side = (side + 2 * layer['p'] - layer['k']) // layer['s'] + 1",
                                               "output_side = side"]),
    "q02": "rf, jump = 1, 1\nfor layer in q02.numbers()['layers']:\n    k, s = (2, 2) if layer['kind'] == 'pool' else "
           "(layer['k'], 1)\n    rf += (k - 1) * jump\n    jump *= s\nrf_and_jump = (rf, jump + 1)  # the jump is off",
    "ex02": "given = ex02.numbers()\nwidth, budget, before = given['width'], given['budget'], given['before_pool']\n"
            "convs = 1\nwhile 9 * width + convs * 9 * width * width < budget:\n    convs += 1\nlayers = []\n"
            "for number in range(1, convs + 1):\n    layers += [nn.Conv2d(1 if number == 1 else width, width, 3, "
            "bias=False), nn.ReLU()]\n    if number == before + 1:  # one conv too late\n"
            "        layers.append(nn.MaxPool2d(2))\nblock = nn.Sequential(*layers)",
    "q03": "saving = 12345",
    "ex03": "given = ex03.numbers()\ntransition = nn.Conv2d(given['c_in'], given['c_out'], 1, stride=2)  # skips",
    "q04": "layer_params = None",
    "ex04": "layers = []\nfor layer in ex04.start():\n    layers.append(layer)\n    if isinstance(layer, nn.Conv2d):\n"
            "        layers.append(nn.BatchNorm2d(layer.out_channels))\n"
            "bn_block = nn.Sequential(*layers)  # BN right after each conv, but the biases stay",
    "q05": "dropout_scale = 1 / (1 - q05.numbers()['p'])",
    "ex06": "given = ex06.numbers()\nhead = nn.Sequential(nn.Flatten(), nn.Linear(given['channels'] * given['side'] "
            "** 2, 10), nn.LogSoftmax(dim=1))",
    "q07a": "given = q07a.numbers()\nbefore, after = given['before'], given['after']\n"
            "noise_verdict = (sum(after) / 3 - sum(before) / 3, not (min(after) > max(before) or max(after) < "
            "min(before)))",
    "q07b": "label_keeping = set()",
    "q07c": "given = q07c.numbers()\nsteps_and_peak = (given['epochs'] * -(-given['images'] // given['batch']), 0)",
    "ex07": "model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))",
    "q08": "given = q08.numbers()\nplain_and_separable = (9 * given['c_in'] * given['c_out'], 0)",
}


def grade_id(cell: nbformat.NotebookNode) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def submission(base: Path, student: str, answers: dict[str, str]) -> nbformat.NotebookNode:
    """Return the notebook at `base` with STUDENT set to `student` and the given answer cells replaced."""
    nb = nbformat.read(base, as_version=4)
    for cell in nb.cells:
        if grade_id(cell) == "student":
            cell.source = f"STUDENT = {student!r}"
        name = grade_id(cell).removesuffix("-answer")
        if name in answers:
            cell.source = f"# Answer {name}\n{answers[name]}"
    return nb


def solution(name: str) -> str:
    """Return the instructor's solution to exercise `name`, as an answer cell's code."""
    source = next(c.source for c in nbformat.read(SOURCE, as_version=4).cells if grade_id(c) == f"{name}-answer")
    return source.split(BEGIN)[1].split(END)[0].strip()


def expected_points(student: str, answers: dict[str, str]) -> dict[str, int]:
    """Grade the answers in this process, as both graders should: STUDENT, the import cell, the answer cells."""
    namespace: dict[str, object] = {"STUDENT": student}
    exec(PRELUDE, namespace)
    for source in answers.values():
        exec(source, namespace)
    return {name: ex.grade(namespace.get(ex.variable), student).points for name, ex in EXERCISES.items()}


def nbgrader(course: Path, *args: str) -> str:
    """Run an nbgrader command in `course`; return what it printed."""
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--debug"], cwd=course, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> dict[str, object]:
    course = tmp_path_factory.mktemp("course")
    (course / "nbgrader_config.py").write_text(CONFIG)
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    shutil.copy(SOURCE, course / "source" / ASSIGNMENT / "exercises.ipynb")
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--create", "--force")
    release = course / "release" / ASSIGNMENT / "exercises.ipynb"
    partly = {**PARTLY, "ex08": solution("ex08"),
              "q03b": "stuck_digit = (1, 50.0)  # the digit is right, the accuracy is not",
              "q04b": solution("q04b") + "\nconv_and_bn = (conv, conv)  # the batch norm left out",
              "q05b": solution("q05b") + "\ncurves = (curves[1], curves[1], curves[2])  # the wrong run overfits",
              "ex05": solution("ex05") + "\neval_fix = (evaluate_buggy, before, after)  # the bug left in",
              "q07d": solution("q07d") + "\nablation = (ablation[0], 'z')  # no such change",
              "q07e": solution("q07e") + "\nsplit_and_leak = ('the dev set', split_and_leak[1])"}
    notebooks = {
        "alice": submission(release, "alice", {name: solution(name) for name in EXERCISES}),
        "bob": submission(STUDENT_NOTEBOOK, "bob", {}),  # the committed student version, handed in unanswered
        "carol": submission(release, "carol", partly),
    }
    ours = course / "ours"
    ours.mkdir()
    for student, nb in notebooks.items():
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "exercises.ipynb")
        nbformat.write(nb, ours / f"{student}.ipynb")
    autograde_log = nbgrader(course, "autograde", ASSIGNMENT, "--create")

    from nbgrader.api import Gradebook

    scores: dict[str, dict[str, float]] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in notebooks:
            graded = gradebook.find_submission_notebook("exercises", ASSIGNMENT, student)
            scores[student] = {grade.name.removesuffix("-check"): grade.score for grade in graded.grades}

    out = course / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "mnist_lesson", "grade", str(ours), "--out", str(out), "--timeout",
                           "900"], capture_output=True, text=True, timeout=3600, cwd=course)
    ours_rows = list(csv.DictReader(out.open(newline=""))) if out.exists() else []
    return {"nbgrader": scores, "grade": ours_rows, "grade_run": done, "partly": partly, "autograde_log": autograde_log,
            "release": nbformat.read(release, as_version=4)}


def test_nbgrader_generates_the_assignment_with_our_answer_cells(round_trip: dict[str, object]) -> None:
    release = round_trip["release"]
    assert BEGIN not in nbformat.writes(release)
    for name, exercise in EXERCISES.items():
        cell = next(c for c in release.cells if grade_id(c) == f"{name}-answer")
        assert cell.source.strip().endswith(f"{exercise.variable} = None")  # no NotImplementedError stub


def test_nbgrader_gives_full_marks_zero_and_the_partial_points(round_trip: dict[str, object]) -> None:
    scores = round_trip["nbgrader"]
    full = {name: ex.max_points for name, ex in EXERCISES.items()}
    assert scores["alice"] == full
    assert scores["bob"] == dict.fromkeys(EXERCISES, 0)
    carol = expected_points("carol", round_trip["partly"])
    assert scores["carol"] == carol
    assert 0 < sum(carol.values()) < sum(full.values())
    assert {carol[name] for name in ("q02", "ex03", "ex04", "ex06", "q07a", "q07c", "q08", "q03b", "q04b", "q07d",
                                     "q07e")} == {1}  # partial credit
    assert (carol["ex02"], carol["ex07"], carol["ex08"], carol["q05b"], carol["ex05"]) == (2, 0, 3, 2, 2)


def test_nbgrader_and_grade_agree_on_every_exercise(round_trip: dict[str, object]) -> None:
    run = round_trip["grade_run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = round_trip["grade"]
    ours = {(r["student"], r["exercise"]): int(r["points"]) for r in rows}
    for student, scores in round_trip["nbgrader"].items():
        assert {name: ours[(student, name)] for name in EXERCISES} == {n: int(s) for n, s in scores.items()}, student
        assert ours[(student, "TOTAL")] == sum(scores.values())


def test_the_committed_student_version_keeps_every_locked_cell_as_nbgrader_locked_it(
        round_trip: dict[str, object]) -> None:
    """The Colab badge sits in a cell of its own: nbgrader finds no locked cell changed in the handed-in student
    version (it used to report "checksum for cell intro has changed" for every submission)."""
    log = str(round_trip["autograde_log"])
    changed = [line for line in log.splitlines() if "checksum" in line.lower() and "changed" in line.lower()]
    assert not changed, changed[:5]

