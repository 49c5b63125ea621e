"""Student versions of the exercise notebook: solutions between markers become a friendly stub.

The source notebook (notebooks/exercises.ipynb) holds each solution between `### BEGIN SOLUTION` and
`### END SOLUTION` (nbgrader's markers). `python -m mnist_lesson student` writes the student version
(notebooks/student/exercises.ipynb) with every solution replaced by a stub that raises
NotImplementedError, and all outputs cleared; a test fails while the committed student version is stale.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
RAISES_TAGS = ["raises-exception"]  # nbclient and nbval both read it: this cell is meant to raise
# From a BEGIN line to the first END line, whatever trails either marker (spaces, "\r", a comment).
_SOLUTION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*$",
                       re.DOTALL | re.MULTILINE)


def stub(indent: str, exercise: str) -> str:
    """Return the lines that replace one solution."""
    return (f"{indent}# Your answer here: replace the line below.\n"
            f"{indent}raise NotImplementedError(\"{exercise}: write your answer here, then run the check below.\")")


def student_version(source: nbformat.NotebookNode, badge_line: str | None = None) -> nbformat.NotebookNode:
    """Return a copy of `source` with solutions replaced by stubs, every output cleared and, when given,
    the Colab badge line of the first cell replaced by `badge_line`."""
    nb = copy.deepcopy(source)
    if badge_line is not None and nb.cells:
        nb.cells[0].source = "\n".join(badge_line if "colab-badge.svg" in line else line
                                       for line in nb.cells[0].source.splitlines())
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        if BEGIN not in cell.source:
            continue
        if cell.source.count(BEGIN) != cell.source.count(END):
            raise ValueError(f"unbalanced solution markers in cell:\n{cell.source}")
        name = re.search(r"ex\d\d", cell.source)
        exercise = f"Exercise {name.group(0)}" if name else "This exercise"
        cell.source = _SOLUTION.sub(lambda m, e=exercise: stub(m.group(1), e), cell.source)
        if BEGIN in cell.source or END in cell.source:  # never ship a solution because of odd markers
            raise ValueError(f"solution markers left after stubbing; check their order in cell:\n{cell.source}")
        tags = cell.metadata.setdefault("tags", [])
        tags.extend(tag for tag in RAISES_TAGS if tag not in tags)
    return nb


def write_student_version(source: Path, target: Path) -> Path:
    """Write the student version of the notebook at `source` to `target`; return `target`."""
    from mnist_lesson.colab import badge

    nb = student_version(nbformat.read(source, as_version=4), badge(target.name, "notebooks/student"))
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target
