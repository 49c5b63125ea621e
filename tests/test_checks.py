"""Exercise checks and the student version of the exercise notebook."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from mnist_lesson.checks import EXERCISES, ex02, ex03, ex04, ex05, ex06, ex07, plain_block
from mnist_lesson.colab import badge
from mnist_lesson.exercises import BEGIN, END, RAISES_TAGS, student_version
from mnist_lesson.models import conv_block

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "notebooks" / "exercises.ipynb"
STUDENT = REPO / "notebooks" / "student" / "exercises.ipynb"


def bn_block(dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in [(1, 8), (8, 16), (16, 16)]:
        layers += [nn.Conv2d(c_in, c_out, 3), nn.ReLU(), nn.BatchNorm2d(c_out)]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


GOOD = {
    "ex02": nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU()),
    "ex03": nn.Conv2d(32, 8, 1, bias=False),
    "ex04": bn_block(),
    "ex05": bn_block(dropout=0.1),
    "ex06": nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(16, 10, 1), nn.Flatten(), nn.LogSoftmax(dim=1)),
    "ex07": nn.Sequential(conv_block(1, 8, padding=1), conv_block(8, 12), conv_block(12, 16), nn.MaxPool2d(2),
                          conv_block(16, 8, kernel_size=1), conv_block(8, 12), conv_block(12, 16), conv_block(16, 12),
                          nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 10, 1, bias=False), nn.Flatten(),
                          nn.LogSoftmax(dim=1)),
}

BAD = [
    ("ex02", nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)),
     "receptive field is 5 pixels and must be at least 16"),
    ("ex02", nn.Sequential(nn.Conv2d(1, 64, 3), nn.Conv2d(64, 64, 3), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3),
                           nn.Conv2d(64, 64, 3)), "over the limit of 6,000; the heaviest layer is 1"),
    ("ex02", nn.Sequential(nn.Conv2d(1, 8, 3), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.MaxPool2d(2),
                           nn.Conv2d(8, 8, 3)), "uses 2 max-pools"),
    ("ex02", nn.Sequential(nn.Conv2d(1, 8, 3), nn.Upsample(scale_factor=2)), "cannot read your model: layer '1'"),
    ("ex02", nn.Sequential(nn.Conv2d(1, 1, 16)), "this exercise is about plain 3x3 convolutions"),
    ("ex02", nn.Sequential(nn.Conv2d(1, 8, 5), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, dilation=2)),
     "allows only one MaxPool2d"),
    ("ex03", nn.Conv2d(32, 8, 3, padding=1), "looks at 3x3 neighbourhoods"),
    ("ex03", nn.Conv2d(32, 16, 1), "must give 8x12x12"),
    ("ex03", nn.Conv2d(16, 8, 1), "fails on a batch of shape (2, 32, 12, 12)"),
    ("ex04", plain_block(), "conv 1 (1->8) has no BatchNorm2d"),
    ("ex04", nn.Sequential(nn.Conv2d(1, 4, 3)), "keep the three convolutions"),
    ("ex05", bn_block(), "conv 3 (16->16) has no Dropout2d"),
    ("ex05", bn_block(dropout=0.5), "keep each between 0 (exclusive) and 0.2"),
    ("ex05", nn.Sequential(nn.Conv2d(1, 8, 3), nn.Dropout2d(0.1), nn.Conv2d(8, 16, 3), nn.Dropout2d(0.1),
                           nn.Conv2d(16, 16, 3), nn.Dropout2d(0.1)), "has no BatchNorm2d"),
    ("ex06", nn.Sequential(nn.Flatten(), nn.Linear(256, 10), nn.LogSoftmax(dim=1)), "no average pooling layer"),
    ("ex06", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)), "not log-probabilities"),
    ("ex07", nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LogSoftmax(dim=1)),
     "reaches"),
    ("ex07", GOOD["ex02"], "it returns shape"),
    ("ex07", nn.Sequential(*list(GOOD["ex07"])[:-1]), "not log-probabilities"),
]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_correct_answer_passes(name: str) -> None:
    result = EXERCISES[name].grade(GOOD[name])
    assert result.passed and result.points == result.max_points, result.message


@pytest.mark.parametrize(("name", "answer", "expected"), BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_a_wrong_answer_says_what_is_wrong(name: str, answer: nn.Module, expected: str) -> None:
    result = EXERCISES[name].grade(answer)
    assert not result.passed and result.points == 0
    assert expected in result.message


class ReturnsTuple(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Exits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise SystemExit(3)


def test_odd_modules_are_explained_not_crashed() -> None:
    assert "returns a tuple, not a tensor" in ex06.grade(ReturnsTuple()).message
    assert "SystemExit" in ex03.grade(Exits()).message


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("student bug")


@pytest.mark.parametrize("exercise", [ex02, ex03, ex04, ex05, ex06, ex07], ids=lambda e: e.name)
@pytest.mark.parametrize("answer", [None, "a string", 42, print, Broken()], ids=["None", "str", "int", "function",
                                                                                 "raises"])
def test_checks_never_crash_on_wrong_types(exercise, answer: object) -> None:  # type: ignore[no-untyped-def]
    result = exercise.grade(answer)
    assert not result.passed and result.message
    if answer is None:
        assert "is None" in result.message
    elif isinstance(answer, Broken) and exercise in (ex03, ex06, ex07):  # these run the module first
        assert "ZeroDivisionError" in result.message or "student bug" in result.message
    elif not isinstance(answer, Broken):
        assert "nn.Module" in result.message


def test_check_prints_and_hint_gets_more_specific(capsys: pytest.CaptureFixture[str]) -> None:
    ex03.check(GOOD["ex03"])
    assert capsys.readouterr().out.startswith("Correct (1/1) - ex03 transition")
    ex03.hint()
    ex03.hint()
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("Hint:") and second.startswith("Hint:") and first != second


def test_student_version_replaces_solutions_and_clears_outputs() -> None:
    source = nbformat.read(SOURCE, as_version=4)
    student = student_version(source, badge("exercises.ipynb", "notebooks/student"))
    solutions = [c for c in source.cells if BEGIN in c.source]
    assert len(solutions) == len(EXERCISES)
    stubs = [c for c in student.cells if "raise NotImplementedError" in c.source]
    assert len(stubs) == len(EXERCISES)
    assert all(BEGIN not in c.source and END not in c.source for c in student.cells)
    for solution, stub in zip(solutions, stubs, strict=True):
        answer = solution.source.split(BEGIN)[1].split(END)[0].strip()
        assert answer not in stub.source
        assert set(RAISES_TAGS) <= set(stub.metadata["tags"])
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    assert "notebooks/student/exercises.ipynb" in student.cells[0].source


def test_odd_markers_never_leak_a_solution() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = None\n{BEGIN}  \r\nx = 'secret 1'\n{END} # done\ny = 2\n"
                                          f"{BEGIN}\nz = 'secret 2'\n{END}")]
    source = student_version(nb).cells[0].source
    assert "secret" not in source and "y = 2" in source and source.count("NotImplementedError") == 2


def test_unbalanced_markers_are_refused() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = None\n{BEGIN}\nx = 1\n")]
    with pytest.raises(ValueError, match="unbalanced"):
        student_version(nb)


def test_committed_student_version_is_up_to_date() -> None:
    fresh = student_version(nbformat.read(SOURCE, as_version=4), badge("exercises.ipynb", "notebooks/student"))
    committed = nbformat.read(STUDENT, as_version=4)
    assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in committed.cells] == \
        [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in fresh.cells], \
        "stale: run `python -m mnist_lesson student`, then benchmarks/run_notebooks.py on the student notebook"
