"""What an exercise is: `Exercise` (`q02.question()`, `q02.check()`, `q02.hint()` in notebooks/exercises.ipynb),
the student key its numbers derive from, its `Result`, and the readers a check is written with.

Each student gets their own numbers: they derive from a student key (`student_key`: the notebook's `STUDENT`, else
$MNIST_LESSON_STUDENT, else "anonymous") and the exercise's name, through a seeded `random.Random`, so the grader
regenerates them and a neighbour's answers do not fit.

A check reads the answer from the notebook (`ex02.check()`), prints one line and returns the points earned as the
cell's value (nbgrader reads that value as partial credit). It never raises: the readers below (`as_whole`,
`as_module`, ...) turn an answer of any type or shape into a value or an explanation (`Explained`). The exercises
themselves live in mnist_lesson.grading.exercises. The grader execs this module's source into a fresh module too
(its private copy), so it imports the rest of the package by absolute name only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mnist_lesson.device import model_device
from mnist_lesson.grading.contract import UNANSWERED
from mnist_lesson.receptive_field import LayerTable, UnsupportedLayerError, layer_table

STUDENT_ENV = "MNIST_LESSON_STUDENT"
ANONYMOUS = "anonymous"


def student_key(namespace: Mapping[str, object]) -> str:
    """Return the key a student's numbers derive from: `STUDENT` in `namespace` if a non-empty string, else
    $MNIST_LESSON_STUDENT, else "anonymous"; normalized by trimming, collapsing inner spaces and lower-casing."""
    for candidate in (namespace.get("STUDENT"), os.environ.get(STUDENT_ENV)):
        if isinstance(candidate, str) and candidate.split():
            return " ".join(candidate.split()).casefold()
    return ANONYMOUS


def _rng(exercise: str, student: str) -> random.Random:
    # A hash, not Python's hash(): the same numbers in every process, on every machine.
    digest = hashlib.sha256(f"{exercise}\n{student}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def caller_namespace() -> dict[str, Any]:
    # The globals of whoever called the public method (the notebook, in a cell): two frames up from here.
    return sys._getframe(2).f_globals


@dataclass(frozen=True)
class Result:
    """The outcome of one check: points earned, out of how many, and what the student should read."""

    exercise: str
    points: int
    max_points: int
    message: str

    @property
    def passed(self) -> bool:
        """True when every point was earned."""
        return self.points == self.max_points

    def __str__(self) -> str:
        mark = "Correct" if self.passed else "Not yet"
        return f"{mark} ({self.points}/{self.max_points}) - {self.exercise}: {self.message}"


class Explained(Exception):
    """A problem already phrased for the student; the answer earns no points."""


Numbers = dict[str, Any]
Marks = tuple[int, list[str]]  # points earned, and what is wrong (empty when nothing is)


class Exercise:
    """One exercise: `question()` prints it with the student's numbers, `check()` grades the notebook's answer,
    `hint()` prints the next hint (and counts it in `hints_used`)."""

    def __init__(self, name: str, title: str, variable: str, max_points: int, make: Callable[[random.Random], Numbers],
                 render: Callable[[Numbers], str], check: Callable[[object, Numbers], Marks], hints: list[str]) -> None:
        self.name, self.title, self.variable, self.max_points = name, title, variable, max_points
        self._make, self._render, self._check, self._hints = make, render, check, hints
        self.hints_used = 0  # how many times hint() ran in this Python process (the grader records it)

    def given(self, student: str) -> Numbers:
        """Return this exercise's numbers for `student` (the same every time)."""
        return self._make(_rng(self.name, student))

    def text(self, student: str) -> str:
        """Return the question as `student` reads it."""
        return self._render(self.given(student))

    def grade(self, answer: object, student: str = ANONYMOUS) -> Result:
        """Return the Result of `answer` for `student`'s numbers, without printing; never raises."""
        if answer is None:
            return Result(self.name, 0, self.max_points, f"{UNANSWERED} (assign `{self.variable}` in the answer "
                                                          "cell above, run it, then run this check again).")
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")  # nbgrader gives 0 to a test cell that writes to stderr
                points, problems = self._check(answer, self.given(student))
        except Explained as exc:
            points, problems = 0, [str(exc)]
        except UnsupportedLayerError as exc:
            points, problems = 0, [f"the receptive-field table cannot read your model: {exc}"]
        except KeyboardInterrupt:  # the grader interrupts a check that runs too long
            points, problems = 0, ["checking it was stopped because it took too long (does forward() loop?)"]
        except BaseException as exc:  # a student's module may fail in any way, even sys.exit(): explain
            points, problems = 0, [f"running your answer raised {type(exc).__name__}: {str(exc)[:300]}"]
        points = max(0, min(int(points), self.max_points))
        if points == self.max_points and not problems:
            return Result(self.name, points, self.max_points, "all requirements met.")
        return Result(self.name, points, self.max_points, " ".join(problems) or "not all requirements met.")

    def question(self) -> None:
        """Print the question with the numbers of the notebook's student key."""
        key = student_key(caller_namespace())
        note = " (set STUDENT at the top for your own numbers)" if key == ANONYMOUS else ""
        print(f"{self.name} · {self.title} ({self.max_points} point{'s' * (self.max_points > 1)}), "
              f"numbers for student key {key!r}{note}:\n{self.text(key)}")

    def numbers(self) -> Numbers:
        """Return the numbers of the question for the notebook's student key (a fresh copy)."""
        return self.given(student_key(caller_namespace()))

    def check(self, answer: object = ...) -> int:
        """Print whether the notebook's answer meets the requirements and return the points earned (the cell's value).

        Without an argument the answer is read from the notebook's variable `self.variable`."""
        namespace = caller_namespace()
        if answer is ...:
            if self.variable not in namespace:
                print(f"Run the answer cell first (0/{self.max_points}) - {self.name}: `{self.variable}` is not "
                      "defined yet; run the answer cell above, then this check.")
                return 0
            answer = namespace[self.variable]
        result = self.grade(answer, student_key(namespace))
        print(result)
        return result.points

    def hint(self) -> None:
        """Print the next hint (more specific each time; the last one repeats) and count it."""
        self.hints_used += 1
        print(f"Hint {min(self.hints_used, len(self._hints))} of {len(self._hints)}: "
              f"{self._hints[min(self.hints_used, len(self._hints)) - 1]}")


def show_key() -> None:
    """Print the student key the notebook's numbers derive from."""
    key = student_key(caller_namespace())
    if key == ANONYMOUS:
        print("Student key: 'anonymous'. Set STUDENT in the cell above to your student id and run it: every question's "
              "numbers are made from it, and your instructor grades with the same numbers.")
    else:
        print(f"Student key: {key!r}. Every question's numbers are made from it; your instructor grades with the "
              "same numbers.")


# --- reading answers: any type, explained ---------------------------------------------------------------


def describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _scalar(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()  # a numpy number
    return value


def as_whole(value: object, what: str) -> int:
    value = _scalar(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.replace(",", "").replace("_", "").strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not float(value).is_integer():
        raise Explained(f"{what} should be a whole number such as 42, not {describe(value)}.")
    return int(value)


def as_real(value: object, what: str) -> float:
    value = _scalar(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.replace(",", "").strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Explained(f"{what} should be a number such as 1.25, not {describe(value)}.")
    return float(value)


def as_yes_no(value: object, what: str) -> bool:
    value = _scalar(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"yes", "no", "true", "false"}:
        return value.strip().lower() in {"yes", "true"}
    raise Explained(f"{what} should be True or False, not {describe(value)}.")


def as_pair(value: object, shape: str) -> tuple[object, object]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return value[0], value[1]
    raise Explained(f"the answer should be a pair {shape}, not {describe(value)}.")


def grade_parts(*parts: tuple[Callable[[], bool], str]) -> Marks:
    """Grade independent parts, one point each; a part whose value cannot be read explains why and earns 0."""
    points, problems = 0, []
    for test, problem in parts:
        try:
            if test():
                points += 1
            else:
                problems.append(problem)
        except Explained as exc:
            problems.append(str(exc))
    return points, problems


# --- reading models: any module, explained --------------------------------------------------------------

_REGISTRY_MODULES = ("mnist_lesson.models", "mnist_lesson.explore")
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.PReLU, nn.ReLU6, nn.Hardswish,
                nn.Mish, nn.SELU, nn.CELU)
POINTWISE = (*ACTIVATIONS, nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Identity)


def as_module(answer: object, what: str) -> nn.Module:
    if not isinstance(answer, nn.Module):
        raise Explained(f"your {what} should be a torch nn.Module (for example nn.Sequential(...)), "
                         f"not a {type(answer).__name__}.")
    for module in answer.modules():
        home = type(module).__module__
        if home in _REGISTRY_MODULES or home == "mnist_lesson" or home.startswith("mnist_lesson."):
            raise Explained(
                f"your {what} is (or contains) the course's own {type(module).__name__} from {home}. This exercise "
                "asks for a design of your own: build it from torch layers (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, "
                "...) with what the notebooks showed; the course's models are there to read, not to hand in.")
    return answer


def leaf_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def output_on_zeros(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape, device=model_device(model)))  # where the student's model is
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Explained(f"your model fails on a batch of shape {(2, *shape)}: {first[:300]}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise Explained(f"your model returns a {type(out).__name__}, not a tensor; return the output itself.")
    return out.cpu()


def table_of(model: nn.Module, shape: tuple[int, int, int]) -> LayerTable:
    try:
        return layer_table(model, shape)
    except UnsupportedLayerError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Explained(f"your model fails on a {'x'.join(map(str, shape))} input: {first[:300]}") from None


def rows_with_modules(model: nn.Module, table: LayerTable) -> list[tuple[Any, nn.Module]]:
    """Return each row of `model`'s layer table with the module it describes (a bare layer's one row: the layer)."""
    named = dict(model.named_modules())
    leaf = len(named) == 1  # a single layer, not a container: its row is named after its class
    return [(row, model if leaf else named[row.name.split(" (call")[0]]) for row in table.rows]


def log_probs_problem(out: torch.Tensor, batch: int = 2) -> str | None:
    """Return what is wrong with `out` as (batch, 10) log-probabilities, or None."""
    if tuple(out.shape) != (batch, 10):
        return (f"for {batch} inputs it returns shape {tuple(out.shape)}; it must return ({batch}, 10), one "
                "log-probability per class.")
    if not torch.allclose(out.float().exp().sum(dim=1), torch.ones(batch, device=out.device), atol=1e-3):
        return "its outputs are not log-probabilities: end with nn.LogSoftmax(dim=1)."
    return None


def rows_before_flat(table: LayerTable) -> list[Any]:
    """Return the table's rows before the first Flatten or Linear: the part that still sees a map of pixels."""
    rows = []
    for row in table.rows:
        if row.kind in ("Flatten", "Linear"):
            break
        rows.append(row)
    return rows


def conv_rf(table: LayerTable) -> int:
    rows = rows_before_flat(table)
    return rows[-1].rf if rows else 1


def parameter_problem(model: nn.Module, params: int, budget: int) -> str:
    heaviest = max(((name, sum(p.numel() for p in m.parameters(recurse=False))) for name, m in model.named_modules()),
                   key=lambda item: item[1])
    return (f"it has {params:,} parameters; your budget is fewer than {budget:,} (over by {params - budget + 1:,}; "
            f"the heaviest layer is {heaviest[0] or 'the model'} with {heaviest[1]:,}).")
