"""What the grader and its gradebook share: the exercises as the grader reads them once (`Checks`), one row of
grades (`Row`, the `TOTAL` row last) and a file's digest. Both import this module; neither imports the other.

The exercises' side of the contract (issue 14): the checks module (default mnist_lesson.grading.exercises) has
EXERCISES ({name: exercise with title, variable, max_points and grade(answer, key)}), PRELUDE (the exercise
notebook's import cell) and student_key(namespace); optionally COPIED_WITH, the modules whose code its checks run,
which the grader's private copy copies too.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mnist_lesson
from mnist_lesson.config import UsageError

CHECKS_MODULE = "mnist_lesson.grading.exercises"
TOTAL = "TOTAL"  # the exercise name of each student's last row: the sum of the points, how the notebook ran


def file_digest(path: Path) -> str | None:
    """Return the sha256 of the file at `path`, or None when there is no such file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None

UNANSWERED = "not answered yet"  # how a check's message starts when its answer is still None (grading/exercise.py)

@dataclass(frozen=True)
class Row:
    """One line of the gradebook; `hints` is None where hint use could not be read."""

    student: str
    exercise: str
    points: int
    max_points: int
    hints: int | None
    message: str
    version: str = mnist_lesson.__version__  # the mnist_lesson version of the grader that wrote the row

    def cells(self) -> list[object]:
        """Return the row's CSV cells, in the gradebook's column order, the message on one line."""
        return [self.student, self.exercise, self.points, self.max_points, "" if self.hints is None else self.hints,
                " ".join(self.message.split()), self.version]


@dataclass(frozen=True)
class ExerciseInfo:
    """What the grader needs to know of one exercise."""

    name: str
    title: str
    variable: str
    max_points: int


@dataclass(frozen=True)
class Checks:
    """The checks module as the grader uses it: read once, so editing the exercises while grading changes nothing."""

    module: str  # its import name in the kernels (hint use is read from it there)
    sources: tuple[tuple[str, str], ...]  # (module name, source): the grading step builds a private copy of each,
    # in this order, the checks module last
    exercises: tuple[ExerciseInfo, ...]
    prelude: str  # the exercise notebook's import cell
    student_key: Callable[[Mapping[str, object]], str]

    @property
    def full(self) -> int:
        """Return the maximum total."""
        return sum(ex.max_points for ex in self.exercises)

    @classmethod
    def load(cls, module: str | None = None) -> Checks:
        """Return the checks of `module` (default CHECKS_MODULE; the contract of issue 14: EXERCISES, PRELUDE,
        student_key, and optionally COPIED_WITH)."""
        module = module or CHECKS_MODULE
        mod = importlib.import_module(module)
        missing = [name for name in ("EXERCISES", "PRELUDE", "student_key") if not hasattr(mod, name)]
        if missing:
            raise UsageError(f"{module} has no {', '.join(missing)}: the grader needs the exercises' interface of "
                             "issue 14")
        exercises = tuple(ExerciseInfo(name, str(ex.title), str(ex.variable), int(ex.max_points))
                          for name, ex in mod.EXERCISES.items())
        for ex in exercises:
            if not (ex.variable.isidentifier() and ex.max_points >= 1 and ex.name and ex.name != TOTAL):
                raise UsageError(f"{module}: exercise {ex.name!r} needs a variable name and max_points >= 1")
        names = [*getattr(mod, "COPIED_WITH", ()), module]
        sources = tuple((name, Path(importlib.import_module(name).__file__).read_text(encoding="utf-8"))
                        for name in names)
        return cls(module, sources, exercises, str(mod.PRELUDE), mod.student_key)
