"""The course's manifest (mnist_lesson/course.py) agrees with the notebooks, the models and the studies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mnist_lesson.course import EXERCISE_NOTEBOOKS, LESSONS, check_series, lesson, notebook_paths, notebooks_table
from mnist_lesson.models import MODELS
from mnist_lesson.studies import STUDIES

REPO = Path(__file__).resolve().parents[1]


def test_the_manifest_and_the_notebooks_on_disk_agree() -> None:
    assert check_series(REPO) == []


def test_every_model_but_the_assignment_is_taught_by_a_listed_notebook() -> None:
    taught = {name for entry in LESSONS for name in entry.models}
    assert taught <= set(MODELS)
    assert set(MODELS) - {"assignment"} <= taught


def test_every_study_and_evidence_file_a_lesson_names_exists() -> None:
    for entry in LESSONS:
        assert set(entry.studies) <= set(STUDIES), entry.notebook
        for name in entry.evidence:
            assert (REPO / "mnist_lesson" / "evidence" / name).is_file(), f"{entry.notebook}: {name}"


def test_notebook_paths_run_lessons_in_order_then_the_exercises() -> None:
    paths = notebook_paths(REPO)
    assert [p.name for p in paths[:len(LESSONS)]] == [entry.notebook for entry in LESSONS]
    assert [str(p.relative_to(REPO)) for p in paths[len(LESSONS):]] == list(EXERCISE_NOTEBOOKS)
    assert notebook_paths(REPO, exercises=False) == paths[:len(LESSONS)]


def test_the_table_has_a_row_per_lesson_with_its_models() -> None:
    rows = notebooks_table().splitlines()[2:]
    assert len(rows) == len(LESSONS)
    for row, entry in zip(rows, LESSONS, strict=True):
        assert row.startswith(f"| `{entry.notebook}` |")
        assert all(f"`{name}`" in row for name in entry.models)


def test_lesson_looks_up_by_number_and_names_the_choices() -> None:
    assert lesson("07").models == ("final",)
    with pytest.raises(KeyError, match="the notebooks are"):
        lesson("42")


def _copy_of_the_series(tmp_path: Path) -> Path:
    for name in ("notebooks", "instructor"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return tmp_path


def test_a_notebook_missing_from_the_manifest_is_named(tmp_path: Path) -> None:
    repo = _copy_of_the_series(tmp_path)
    shutil.copy(repo / "notebooks" / LESSONS[-1].notebook, repo / "notebooks" / f"{len(LESSONS):02d}_more.ipynb")
    (problem,) = check_series(repo)
    assert f"notebooks/{len(LESSONS):02d}_more.ipynb is not listed in mnist_lesson/course.py" in problem


def test_a_listed_notebook_missing_from_disk_is_named(tmp_path: Path) -> None:
    repo = _copy_of_the_series(tmp_path)
    (repo / "notebooks" / LESSONS[3].notebook).unlink()
    (problem,) = check_series(repo)
    assert f"{LESSONS[3].notebook} is listed in mnist_lesson/course.py but notebooks/" in problem
