"""The student version of the exercise notebook, made from the instructor's source with the solutions.

The source, instructor/exercises.ipynb, holds each solution between `### BEGIN SOLUTION` and `### END SOLUTION`
(nbgrader's markers) and carries nbgrader's cell metadata. `python -m mnist_lesson student` writes the student
version, notebooks/exercises.ipynb: every solution region removed (the `x = None` line before it stays, so an
unanswered exercise's check says "not answered yet" instead of raising), every output cleared, and the Colab badge
(a markdown cell of its own, so that nbgrader's locked title cell keeps its checksum) and the Colab setup and device
cells (mnist_lesson.colab) after the title. nbgrader's own
`generate_assignment`, with `ClearSolutions.code_stub = {"python": ""}`, leaves the same answer cells.
A test fails while the committed student version is stale.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path

import nbformat

from mnist_lesson.colab import (
    COLAB_METADATA,
    DEVICE_MARKER,
    SETUP_MARKER,
    badge,
    device_source,
    notebook_folder,
    setup_source,
)
from mnist_lesson.config import UsageError

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOURCE = Path("instructor/exercises.ipynb")
TARGET = Path("notebooks/exercises.ipynb")
# From a BEGIN line to the first END line, whatever trails either marker (spaces, "\r", a comment), whole lines.
_SOLUTION = re.compile(rf"^[ \t]*{re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(?:\n|\Z)",
                       re.DOTALL | re.MULTILINE)
_COLAB_IDS = ("colab-setup", "colab-device")  # fixed cell ids: regenerating the notebook leaves no noise in a diff
_BADGE_ID = "colab-badge"


def strip_solutions(source: str) -> str:
    """Return a cell's source with every solution region removed; raise ValueError for markers that do not pair."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced solution markers in cell:\n{source}")
    stripped = _SOLUTION.sub("", source).rstrip()
    if BEGIN in stripped or END in stripped:  # never ship a solution because of odd markers
        raise ValueError(f"solution markers left after stripping; check their order in cell:\n{source}")
    return stripped


def _lock(cell: nbformat.NotebookNode) -> None:
    # What nbgrader's release step does too: Jupyter then refuses to edit or delete these cells.
    grading = cell.metadata.get("nbgrader", {})
    if grading.get("locked") or grading.get("grade"):
        cell.metadata["editable"] = False
    if grading.get("locked") or grading.get("grade") or grading.get("solution"):
        cell.metadata["deletable"] = False


def _add_colab(nb: nbformat.NotebookNode, name: str, badge_line: str) -> None:
    if not (nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.strip()):
        raise ValueError("the source notebook must start with a markdown cell (its title) for the Colab badge")
    # The badge gets a markdown cell of its own after the title, which stays as nbgrader locked it: editing a locked
    # cell would change its checksum, and nbgrader's autograde would report every submission's as changed.
    nb.cells = [cell for cell in nb.cells if cell.get("id") != _BADGE_ID and not (cell.cell_type == "code" and (
        cell.source.startswith(SETUP_MARKER) or DEVICE_MARKER in cell.source))]
    setup = nbformat.v4.new_code_cell(setup_source(), id=_COLAB_IDS[0])
    device = nbformat.v4.new_code_cell(device_source(name), id=_COLAB_IDS[1])
    nb.cells[1:1] = [nbformat.v4.new_markdown_cell(badge_line, id=_BADGE_ID), setup, device]
    nb.metadata.update(copy.deepcopy(COLAB_METADATA))


def student_version(source: nbformat.NotebookNode, badge_line: str | None = None,
                    name: str = TARGET.name) -> nbformat.NotebookNode:
    """Return a copy of `source` with the solutions removed, every output cleared and locked cells marked read-only;
    with `badge_line`, also a Colab badge cell and the Colab setup and device cells after the title cell."""
    nb = copy.deepcopy(source)
    for cell in nb.cells:
        cell.source = strip_solutions(cell.source)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        _lock(cell)
    if badge_line is not None:
        _add_colab(nb, name, badge_line)
    return nb


def points_mismatches(nb: nbformat.NotebookNode, points: Mapping[str, int]) -> list[str]:
    """Return what disagrees between the notebook's nbgrader check cells ("<name>-check", their points) and `points`
    (each exercise's max_points in grading/exercises.py): the one list an instructor's change must keep equal."""
    found = {}
    for cell in nb.cells:
        grading = cell.metadata.get("nbgrader", {})
        grade_id = grading.get("grade_id", "")
        if grading.get("grade") and isinstance(grade_id, str) and grade_id.endswith("-check"):
            found[grade_id[:-len("-check")]] = grading.get("points")
    problems = [f"{name}: {points[name]} point(s) in grading/exercises.py but {found[name]} in the notebook's nbgrader "
                "metadata" for name in points if name in found and found[name] != points[name]]
    problems += [f"{name}: no nbgrader check cell '{name}-check' in the notebook"
                 for name in points if name not in found]
    problems += [f"{name}: a check cell '{name}-check' for an exercise grading/exercises.py does not have"
                 for name in found if name not in points]
    return problems


def holds_solutions(nb: nbformat.NotebookNode) -> bool:
    """Return whether a notebook holds a solution region (### BEGIN SOLUTION): an instructor's source."""
    return any(BEGIN in cell.source for cell in nb.cells)


def read_source(path: Path) -> nbformat.NotebookNode:
    """Read the instructor's notebook at `path`; raise UsageError in one line when it is not a notebook."""
    try:
        return nbformat.read(path, as_version=4)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError) as exc:
        # nbformat raises NotJSONError (a ValueError) or a validation error for a file that is not a notebook
        raise UsageError(f"--source {path} is not a Jupyter notebook ({type(exc).__name__}); pass the instructor's "
                         f"notebook, e.g. {SOURCE}") from None


def write_student_version(source: Path = SOURCE, target: Path = TARGET) -> Path:
    """Write the student version of the notebook at `source` to `target` (badge and Colab cells for `target`).

    Refuses (UsageError, nothing written) a `source` that is not a notebook, and a `target` that is the source
    itself or any notebook that holds solutions: the student version never overwrites an instructor's file."""
    target = Path(target)
    if target.exists() and (target.is_symlink() or not target.is_file()):
        raise UsageError(f"--out {target} is not a regular file; choose a notebook path such as {TARGET}")
    if target.exists() and Path(source).resolve() == target.resolve():
        raise UsageError(f"--out {target} is the instructor's source itself; choose another --out, such as {TARGET}")
    source_nb = read_source(Path(source))
    from mnist_lesson.grading.exercises import EXERCISES  # torch and the checks: only when a version is written

    mismatches = points_mismatches(source_nb, {name: ex.max_points for name, ex in EXERCISES.items()})
    if mismatches:
        raise UsageError(f"--source {source} and grading/exercises.py disagree ({'; '.join(mismatches)}): change "
                         "both (docs/exercises.md, 'Changing an exercise'), then write the student version again")
    if target.exists():
        try:
            existing = nbformat.read(target, as_version=4)
        except Exception:  # noqa: BLE001 (anything unreadable as a notebook is not overwritten either)
            raise UsageError(f"--out {target} exists and is not a notebook; move it away or choose another --out") \
                from None
        if holds_solutions(existing):
            raise UsageError(f"--out {target} holds solutions (an instructor's notebook); the student version never "
                             f"overwrites one: choose another --out, such as {TARGET}")
    nb = student_version(source_nb, badge(target.name, notebook_folder(target)), target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target
