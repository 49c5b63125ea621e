"""The grader: every kind of submission gets its rows, the gradebook is exact, progress survives crashes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import pytest

from mnist_lesson import grader
from mnist_lesson.checks import EXERCISES

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "notebooks" / "exercises.ipynb"
ALL = list(EXERCISES)
FULL = sum(ex.max_points for ex in EXERCISES.values())
GENEROUS = 1800  # seconds: a limit no correct notebook reaches, however slow or busy the machine


def solved(extra_cells: list[str] = (), replace: dict[str, str] | None = None, at: int = 4) -> str:
    """The solution notebook as JSON, with code cells inserted at index `at` and some answers replaced."""
    nb = nbformat.read(SOLUTION, as_version=4)
    for source in reversed(extra_cells):
        nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    for cell in nb.cells:
        for variable, answer in (replace or {}).items():
            is_answer = cell.cell_type == "code" and cell.source.startswith("# Exercise")
            if is_answer and f"\n{variable} = None" in cell.source:
                cell.source = f"{variable} = {answer}"
    return nbformat.writes(nb)


SUBMISSIONS = {
    "correct": solved(),
    "partly": solved(replace={"transition": "nn.Conv2d(32, 8, 3, padding=1)", "head": "nn.Flatten()"}),
    "raises": solved(extra_cells=["1 / 0"]),
    "tampers": solved(replace={"block": "None"}),
    "floods": solved(extra_cells=["for _ in range(40):\n    print('x' * 1_000_000)"]),
}


@pytest.fixture(scope="module")
def gradebook(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, str]]:
    folder = tmp_path_factory.mktemp("submissions")
    for student, text in SUBMISSIONS.items():
        (folder / f"{student}.ipynb").write_text(text)
    # Tampering after the answers: delete and redefine the checks, forge a pass for ex02.
    nb = nbformat.reads(SUBMISSIONS["tampers"], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import mnist_lesson.checks as c\nc.ex02.grade = lambda answer: c.Result('ex02', 1, 1, 'forged')\n"
        "c.EXERCISES.clear()\ndel ex03\nex04 = None\nglobals = dict"))
    (folder / "tampers.ipynb").write_text(nbformat.writes(nb))
    (folder / "empty.ipynb").write_text("")
    (folder / "broken.ipynb").write_text('{"cells": [')
    (folder / "notes.txt").write_text("not a notebook: ignored")
    out = folder / "grades.csv"
    totals = grader.grade_folder(folder, out, timeout=GENEROUS, log=lambda m: None)
    assert set(totals) == set(SUBMISSIONS) | {"empty", "broken"}
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(totals) * (len(ALL) + 1)
    return {(r["student"], r["exercise"]): r for r in rows}


def points(book: dict, student: str) -> dict[str, int]:
    return {ex: int(book[(student, ex)]["points"]) for ex in ALL + [grader.TOTAL]}


def test_a_correct_submission_gets_full_marks(gradebook: dict) -> None:
    full = {n: ex.max_points for n, ex in EXERCISES.items()}
    assert points(gradebook, "correct") == {**full, grader.TOTAL: FULL}
    assert gradebook[("correct", grader.TOTAL)]["message"] == "ran without errors"


def test_a_partly_correct_submission_gets_its_points_and_reasons(gradebook: dict) -> None:
    expected = {**{n: ex.max_points for n, ex in EXERCISES.items()}, "ex03": 0, "ex06": 0}
    assert points(gradebook, "partly") == {**expected, grader.TOTAL: sum(expected.values())}
    assert "3x3 neighbourhoods" in gradebook[("partly", "ex03")]["message"]
    assert gradebook[("partly", "ex02")]["message"] == "all requirements met."


def test_an_exception_costs_nothing_else(gradebook: dict) -> None:
    assert points(gradebook, "raises")[grader.TOTAL] == FULL
    assert gradebook[("raises", grader.TOTAL)]["message"] == "1 cell(s) raised an error"


def test_an_endless_loop_is_stopped_and_still_graded(tmp_path: Path) -> None:
    """The only case that needs a short limit: a tiny notebook that loops, so the machine's speed cannot matter."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("while True:\n    pass")])
    path = tmp_path / "loops.ipynb"
    path.write_text(nbformat.writes(nb))
    rows = grader.grade_notebook(path, timeout=10)
    assert [r.exercise for r in rows] == ALL + [grader.TOTAL]  # interrupted, then graded all the same
    assert "did not finish within the 10 s limit" in rows[-1].message


def test_redefining_or_deleting_the_checks_changes_nothing(gradebook: dict) -> None:
    # The answers stand; only `block` was left empty, and the forged ex02.grade is not the grader's.
    expected = {n: ex.max_points for n, ex in EXERCISES.items()}
    assert points(gradebook, "tampers") == {**expected, "ex02": 0, grader.TOTAL: FULL - EXERCISES["ex02"].max_points}
    assert "is None" in gradebook[("tampers", "ex02")]["message"]  # not the forged pass


def test_a_flood_of_output_is_cut_and_graded(gradebook: dict) -> None:
    assert points(gradebook, "floods")[grader.TOTAL] == FULL
    assert "output beyond" in gradebook[("floods", grader.TOTAL)]["message"]


def test_files_that_are_not_notebooks_get_rows_with_the_reason(gradebook: dict) -> None:
    assert points(gradebook, "empty")[grader.TOTAL] == 0
    assert gradebook[("empty", "ex05")]["message"].startswith("empty file")
    assert gradebook[("broken", grader.TOTAL)]["message"].startswith("not a valid notebook")
    assert gradebook[("broken", grader.TOTAL)]["max_points"] == str(FULL)


def test_rerun_skips_graded_students_and_redo_grades_again(tmp_path: Path) -> None:
    (tmp_path / "a.ipynb").write_text("")
    (tmp_path / "b.ipynb").write_text("[]")
    out = tmp_path / "grades.csv"
    assert set(grader.grade_folder(tmp_path, out, log=lambda m: None)) == {"a", "b"}
    before = out.read_text()
    messages: list[str] = []
    assert grader.grade_folder(tmp_path, out, log=messages.append) == {}
    assert out.read_text() == before and "skipping 2 student(s)" in messages[0]
    assert set(grader.grade_folder(tmp_path, out, redo=True, log=lambda m: None)) == {"a", "b"}
    assert out.read_text() == before  # same rows, not duplicated


def test_a_failure_on_one_notebook_never_stops_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.ipynb").write_text("")
    real = grader.grade_notebook

    def fail_on_b(path: Path, timeout: float) -> list:
        if path.stem == "b":
            raise RuntimeError("something unforeseen")
        return real(path, timeout)

    monkeypatch.setattr(grader, "grade_notebook", fail_on_b)
    out = tmp_path / "grades.csv"
    assert set(grader.grade_folder(tmp_path, out, log=lambda m: None)) == {"a", "b", "c"}
    with open(out, newline="") as f:
        total_b = [r for r in csv.DictReader(f) if r["student"] == "b" and r["exercise"] == grader.TOTAL][0]
    assert "grader failed on this notebook (RuntimeError: something unforeseen)" in total_b["message"]


def test_a_killed_grader_keeps_the_students_already_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.ipynb").write_text("")
    real = grader.grade_notebook

    def killed_on_b(path: Path, timeout: float) -> list:
        if path.stem == "b":
            raise KeyboardInterrupt  # the instructor pressed Ctrl-C, or the machine went down
        return real(path, timeout)

    monkeypatch.setattr(grader, "grade_notebook", killed_on_b)
    out = tmp_path / "grades.csv"
    with pytest.raises(KeyboardInterrupt):
        grader.grade_folder(tmp_path, out, log=lambda m: None)
    assert grader.graded_students(out) == {"a"}
    monkeypatch.setattr(grader, "grade_notebook", real)
    assert set(grader.grade_folder(tmp_path, out, log=lambda m: None)) == {"b", "c"}
    assert grader.graded_students(out) == {"a", "b", "c"}


def test_partial_rows_are_replaced_and_foreign_csv_refused(tmp_path: Path) -> None:
    (tmp_path / "a.ipynb").write_text("")
    out = tmp_path / "grades.csv"
    out.write_text("student,exercise,points,max_points,message\na,ex02,1,1,half-written\n")
    grader.grade_folder(tmp_path, out, log=lambda m: None)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["exercise"] for r in rows] == ALL + [grader.TOTAL] and rows[0]["message"].startswith("empty file")
    other = tmp_path / "other.csv"
    other.write_text("name,score\nx,1\n")
    with pytest.raises(ValueError, match="is not a gradebook"):
        grader.grade_folder(tmp_path, other, log=lambda m: None)


def test_code_that_ignores_interrupts_is_killed(tmp_path: Path) -> None:
    nb = nbformat.reads(solved(extra_cells=["import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                            "while True:\n    pass"]), as_version=4)
    path = tmp_path / "stubborn.ipynb"
    path.write_text(nbformat.writes(nb))
    rows = grader.grade_notebook(path, timeout=5, grading_seconds=10)
    assert [r.points for r in rows] == [0] * (len(ALL) + 1)
    assert "kernel died or was stopped" in rows[-1].message


def test_the_grading_cell_carries_its_own_copy_of_the_checks() -> None:
    source = grader._hidden_cell("n0nce")
    assert "exec(compile(" in source and "spec_from_file_location" not in source
    assert "def _check_rf_block" in source  # the source read at start-up, not the file at grading time


def test_malformed_or_impossible_results_are_refused() -> None:
    cell = nbformat.v4.new_code_cell("")
    good = {name: [0, ex.max_points, "m"] for name, ex in EXERCISES.items()}
    for bad in ["not json", json.dumps({**good, "ex02": [1000, 1, "ok"]}), json.dumps({"ex02": [1, 1, "ok"]}),
                json.dumps({**good, "ex03": "full marks"})]:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="n0nce" + bad)]
        assert grader._parse_results(cell, "n0nce") is None, bad
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="n0nce" + json.dumps(good))]
    assert grader._parse_results(cell, "n0nce") == good


def test_hidden_results_cannot_be_forged_by_printing() -> None:
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text='wrongnonce{"ex02": [1, 1, "x"]}\n')]
    assert grader._parse_results(cell, "rightnonce") is None
    genuine = {name: [0, ex.max_points, "m"] for name, ex in EXERCISES.items()}
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="rightnonce" + json.dumps(genuine)))
    assert grader._parse_results(cell, "rightnonce") == genuine

