"""The exercises (mnist_lesson.grading.exercises): checks, per-student numbers, hints, the grader's private copy;
and the student version of the exercise notebook (mnist_lesson.grading.student_notebook)."""

from __future__ import annotations

import math
import re
import statistics
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.colab import badge
from mnist_lesson.explore import KnobNet, Knobs
from mnist_lesson.grading.contract import Checks
from mnist_lesson.grading.exercise import STUDENT_ENV, Exercise, Result, student_key
from mnist_lesson.grading.exercises import (
    EXERCISES,
    PRELUDE,
    advice,
    best_rf_for_budget,
    ex02,
    ex03,
    ex04,
    ex06,
    ex07,
    ex08,
    q01,
    q02,
    q07a,
    q07c,
)
from mnist_lesson.grading.grader import PRIVATE_COPY
from mnist_lesson.grading.judgement import (
    NEITHER,
    OVERFITTING,
    STILL_LEARNING,
    VALIDATION_COUNTS,
    ablation_verdicts,
    bn_output,
    conv_output,
    epochs_to_keep,
    ex05,
    leak_line,
    overfits,
    q03b,
    q04b,
    q05b,
    q07d,
    q07e,
    recorded_curve,
    still_learning,
)
from mnist_lesson.grading.student_notebook import BEGIN, END, student_version, write_student_version
from mnist_lesson.models import conv_block, get_model, transition_block
from mnist_lesson.receptive_field import layer_table

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "instructor" / "exercises.ipynb"
STUDENT_NOTEBOOK = REPO / "notebooks" / "exercises.ipynb"
KEYS = [f"student{i:02d}" for i in range(40)]
KEY = "alice"
NUMERIC = [name for name in EXERCISES if name.startswith("q")]  # questions answered by numbers (or letters)
BUILT = [name for name in EXERCISES if not name.startswith("q")]
TRAINS = {"ex05", "ex07", "ex08"}  # their checks train a model briefly
MODEL_ANSWERS = [name for name in BUILT if name != "ex05"]  # answered by an nn.Module (ex05: a function and numbers)


def answer_cells(path: Path = SOURCE) -> dict[str, str]:
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"][:-len("-answer")]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith("-answer")}


def solutions(key: str, names: list[str] | None = None) -> dict[str, object]:
    """Run the instructor's answer cells as the grader does (STUDENT, the import cell, the answers); return answers."""
    namespace: dict[str, object] = {"STUDENT": key}
    exec(PRELUDE, namespace)
    for name, source in answer_cells().items():
        if names is None or name in names:
            exec(source, namespace)
    return {name: namespace[EXERCISES[name].variable] for name in (names or EXERCISES)}


# --- correct answers, from the instructor's notebook, for several students --------------------------------


@pytest.mark.parametrize("key", [pytest.param(KEY, marks=pytest.mark.slow), "anonymous", "Bob Smith"])  # KEY trains
def test_the_solutions_earn_full_points_for_every_student(key: str) -> None:
    names = [n for n in EXERCISES if n not in TRAINS or key == KEY]  # training twice per key is slow
    for name, answer in solutions(key, names).items():
        result = EXERCISES[name].grade(answer, student_key({"STUDENT": key}))
        assert result.passed and result.points == EXERCISES[name].max_points, (name, result.message)


def test_no_answer_cell_overwrites_another_exercises_answer() -> None:
    # The grader runs every answer cell, then grades: a helper named like an earlier answer would replace it.
    variables = {exercise.variable for exercise in EXERCISES.values()}
    for name, source in answer_cells().items():
        assigned = set(re.findall(r"^(?:def |class )?(\w+)", source, re.MULTILINE))
        assert assigned & variables == {EXERCISES[name].variable}, name


def test_points_reflect_effort() -> None:
    assert all(EXERCISES[name].max_points in (1, 2, 3) for name in NUMERIC)  # a point per number asked for
    assert all(2 <= EXERCISES[name].max_points <= 4 for name in BUILT)
    assert list(EXERCISES) == [ex.name for ex in EXERCISES.values()]


# --- the numbers are each student's own ---------------------------------------------------------------------


def test_student_key_comes_from_the_notebook_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STUDENT_ENV, raising=False)
    assert {student_key(namespace) for namespace in ({}, {"STUDENT": "  "}, {"STUDENT": 7})} == {"anonymous"}
    assert student_key({"STUDENT": "  Alice   Smith "}) == "alice smith"
    monkeypatch.setenv(STUDENT_ENV, "Bob")
    assert student_key({}) == "bob" and student_key({"STUDENT": "alice"}) == "alice"


@pytest.mark.parametrize("name", list(EXERCISES))
def test_numbers_differ_between_students_and_stay_the_same_for_one(name: str) -> None:
    exercise = EXERCISES[name]
    assert exercise.given(KEY) == exercise.given(KEY) and exercise.text(KEY) == exercise.text(KEY)
    assert len({exercise.text(key) for key in KEYS}) >= 5, "too few different questions across 40 students"


def test_numbers_do_not_depend_on_the_process() -> None:
    # A hash of key and exercise, not Python's randomized hash(): these are fixed forever.
    assert q07c.given("alice") == {"images": 48_000, "batch": 256, "epochs": 16}


def test_the_question_and_the_numbers_follow_the_notebooks_student(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = {"STUDENT": "alice", "q02": q02}
    exec("q02.question()\ngiven = q02.numbers()", namespace)
    out = capsys.readouterr().out
    assert "'alice'" in out and q02.text("alice") in out and namespace["given"] == q02.given("alice")
    exec("STUDENT = ''\nq02.question()", namespace)
    assert "'anonymous' (set STUDENT at the top" in capsys.readouterr().out


@pytest.mark.parametrize("name", NUMERIC)
def test_a_neighbours_answer_fails(name: str) -> None:
    exercise = EXERCISES[name]
    mine = solutions(KEY, [name])[name]
    others = [key for key in KEYS if not exercise.grade(mine, key).passed]
    assert others, f"{name}: every student has the same answer"
    assert len(others) >= len(KEYS) // 2, f"{name}: a copied answer passes for too many students"


# --- independent oracles for the numbers the checks expect -------------------------------------------------


def built_stack(layers: list[dict[str, int]], keep_size: bool) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        if layer["kind"] == "pool":
            modules.append(nn.MaxPool2d(2))
        else:
            padding = layer["k"] // 2 if keep_size else layer["p"]
            modules.append(nn.Conv2d(1, 1, layer["k"], padding=padding, stride=layer.get("s", 1)))
    return nn.Sequential(*modules)


@pytest.mark.parametrize("key", KEYS[:10])
def test_output_sides_rfs_and_counts_agree_with_torch(key: str) -> None:
    side = built_stack(q01.given(key)["layers"], keep_size=False)(torch.zeros(1, 1, 28, 28)).shape[-1]
    assert q01.grade(side, key).passed
    table = layer_table(built_stack(q02.given(key)["layers"], keep_size=True))
    assert q02.grade((table.final_rf, table.rows[-1].jump), key).passed
    n = EXERCISES["q03"].given(key)
    design_a = count_parameters(nn.Conv2d(n["c_in"], n["c_out"], 3, bias=False))
    design_b = count_parameters(nn.Sequential(nn.Conv2d(n["c_in"], n["squeeze"], 1, bias=False),
                                              nn.Conv2d(n["squeeze"], n["c_out"], 3, bias=False)))
    assert EXERCISES["q03"].grade(design_a - design_b, key).passed
    n = EXERCISES["q04"].given(key)
    layer = nn.Sequential(nn.Conv2d(n["c_in"], n["c_out"], n["k"]), nn.BatchNorm2d(n["c_out"]))
    assert EXERCISES["q04"].grade(count_parameters(layer), key).passed
    n = EXERCISES["q08"].given(key)
    plain = count_parameters(nn.Conv2d(n["c_in"], n["c_out"], 3, bias=False))
    separable = count_parameters(nn.Sequential(nn.Conv2d(n["c_in"], n["c_in"], 3, groups=n["c_in"], bias=False),
                                               nn.Conv2d(n["c_in"], n["c_out"], 1, bias=False)))
    assert EXERCISES["q08"].grade((plain, separable), key).passed


@pytest.mark.parametrize("key", KEYS[:3])
def test_the_schedule_question_agrees_with_onecycle(key: str) -> None:
    n = q07c.given(key)
    steps = n["epochs"] * len(range(0, n["images"], n["batch"]))
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])  # the rate the next optimizer step uses
        optimizer.step()
        schedule.step()
    peak = max(range(steps), key=rates.__getitem__) + 1  # counting steps from 1
    assert q07c.grade((steps, peak), key).passed and q07c.grade([steps, peak - 1], key).passed
    assert not q07c.grade((steps, peak + 5), key).passed


@pytest.mark.parametrize("key", KEYS[:20])
def test_the_noise_question_agrees_with_the_courses_compare(key: str) -> None:
    from mnist_lesson.studies import DesignSummary, compare

    n = q07a.given(key)
    before, after = (DesignSummary(label, label, 0, dict(enumerate(figures)), {}) for label, figures in
                     [("before", n["before"]), ("after", n["after"])])
    verdict = "larger than the seed-to-seed noise" in compare(before, after)
    assert q07a.grade((round(after.mean - before.mean, 2), verdict), key).passed
    assert q07a.grade((round(after.mean - before.mean, 2), not verdict), key).points == 1


@pytest.mark.parametrize("key", KEYS[:6])
def test_the_best_receptive_field_for_the_budget_is_the_best(key: str) -> None:
    """Every layout at the minimum width without biases (the cheapest of each): none under the budget beats the
    one the check gives full points, and that one exists."""
    n = ex02.given(key)
    best = None
    for convs in range(1, 11):
        for before in range(n["before_pool"], convs + 1):
            layers: list[nn.Module] = []
            for number in range(1, convs + 1):
                layers += [nn.Conv2d(1 if number == 1 else n["width"], n["width"], 3, padding=1, bias=False), nn.ReLU()]
                if number == before:
                    layers.append(nn.MaxPool2d(2))
            block = nn.Sequential(*layers)
            if count_parameters(block) < n["budget"]:
                rf = layer_table(block).final_rf
                best = max(best or (0, block), (rf, block), key=lambda item: item[0])
    assert best is not None and ex02.grade(best[1], key).points == 3


# --- wrong answers say what is wrong; partial credit -------------------------------------------------------


def plain_convs(widths: list[int], bias: bool = True, pool_after: int | None = None) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip([1, *widths[:-1]], widths, strict=True), start=1):
        layers += [nn.Conv2d(c_in, c_out, 3, bias=bias), nn.ReLU()]
        if i == pool_after:
            layers.append(nn.MaxPool2d(2))
    return layers


def test_numeric_answers_wrong_in_part_earn_part() -> None:
    answers = solutions(KEY, ["q02", "q07a", "q07c", "q08"])
    rf, jump = answers["q02"]
    result = q02.grade((rf, jump + 1), KEY)
    assert result.points == 1 and "the jump" in result.message and "the RF" not in result.message
    result = q02.grade((rf + 2, "many"), KEY)
    assert result.points == 0 and "whole number" in result.message
    difference, clear = answers["q07a"]
    assert q07a.grade((difference + 0.5, clear), KEY).points == 1
    steps, peak = answers["q07c"]
    assert q07c.grade((steps, steps // 2), KEY).points == 1
    plain, separable = answers["q08"]
    assert EXERCISES["q08"].grade((separable, plain), KEY).points == 0


def test_numeric_answers_are_read_kindly() -> None:
    side = solutions(KEY, ["q01"])["q01"]
    for same in (float(side), str(side), torch.tensor(side), f" {side} "):
        assert q01.grade(same, KEY).passed, same
    for wrong, expected in [(True, "not True"), ("lots", "whole number"), ([side], "whole number"),
                            (float("nan"), "whole number"), (side + 0.5, "whole number")]:
        result = q01.grade(wrong, KEY)
        assert result.points == 0 and expected.split()[-1] in result.message, (wrong, result.message)
    assert "pair" in q02.grade(5, KEY).message
    letters = solutions(KEY, ["q07b"])["q07b"]
    assert EXERCISES["q07b"].grade("".join(sorted(letters)).upper(), KEY).passed
    assert "not one of the options" in EXERCISES["q07b"].grade({"z"}, KEY).message


def test_the_most_receptive_field_for_the_budget_earns_by_tiers() -> None:
    n = ex02.given(KEY)  # width 12, budget 5,528, the pool after at least 1 conv: 5 convs fit, RF 20 at best
    width, best = n["width"], best_rf_for_budget(n)
    assert (width, n["before_pool"], best) == (12, 1, 20)
    assert ex02.grade(nn.Sequential(*plain_convs([width] * 5, pool_after=1)), KEY).points == 3
    late = ex02.grade(nn.Sequential(*plain_convs([width] * 5, pool_after=2)), KEY)
    assert late.points == 2 and "RF 18" in late.message and "allows RF 20" in late.message
    assert ex02.grade(nn.Sequential(*plain_convs([width] * 2, pool_after=1)), KEY).points == 1
    over = ex02.grade(nn.Sequential(*plain_convs([width] * 6, pool_after=1)), KEY)
    assert over.points == 0 and "over by" in over.message
    early = ex02.grade(nn.Sequential(nn.MaxPool2d(2), *plain_convs([width] * 5)), KEY)
    assert early.points == 0 and "after 0 convolution(s)" in early.message


CHEAP_EX02 = {  # answers that passed the old exercise: RF >= 16 under 6,000 parameters
    "1-channel convs": nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.MaxPool2d(2),
                                     nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)),
    "the old solution": nn.Sequential(*plain_convs([8, 8, 8], pool_after=3), nn.Conv2d(8, 16, 3), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3), nn.ReLU()),
    "depthwise tricks": nn.Sequential(nn.Conv2d(1, 16, 3), *[nn.Conv2d(16, 16, 3, groups=16) for _ in range(3)],
                                      nn.MaxPool2d(2), *[nn.Conv2d(16, 16, 3, groups=16) for _ in range(4)]),
}


@pytest.mark.parametrize("cheap", list(CHEAP_EX02))
def test_old_cheap_answers_to_the_receptive_field_budget_fail_for_every_student(cheap: str) -> None:
    for key in KEYS:
        result = ex02.grade(CHEAP_EX02[cheap], key)
        assert result.points == 0, (key, result.message)
    assert "output channels" in ex02.grade(CHEAP_EX02["1-channel convs"], KEY).message


def test_transition_checks_shape_mixing_and_budget() -> None:
    n = ex03.given(KEY)
    a, b = n["c_in"], n["c_out"]
    assert ex03.grade(nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(a, b, 1)), KEY).passed
    strided = ex03.grade(nn.Conv2d(a, b, 1, stride=2), KEY)
    assert strided.points == 1 and "skipping pixels" in strided.message
    wide = ex03.grade(nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.MaxPool2d(2)), KEY)
    assert wide.points == 1 and "receptive field is 4" in wide.message and "parameters" in wide.message
    for key in KEYS:  # the package's one-liner, as the old exercise took it, never fits
        assert not ex03.grade(transition_block(32, 8, pool=False), key).passed


def test_batch_norm_checks_order_and_redundant_biases() -> None:
    widths = ex04.given(KEY)["widths"]

    def bn_block(bias: bool, before_relu: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = []
        for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True):
            pair = [nn.BatchNorm2d(c_out), nn.ReLU()] if before_relu else [nn.ReLU(), nn.BatchNorm2d(c_out)]
            layers += [nn.Conv2d(c_in, c_out, 3, bias=bias), *pair]
        return nn.Sequential(*layers)

    assert ex04.grade(bn_block(bias=False), KEY).passed
    biased = ex04.grade(bn_block(bias=True), KEY)
    assert biased.points == 1 and "keep a bias" in biased.message
    after_relu = ex04.grade(bn_block(bias=False, before_relu=False), KEY)
    assert after_relu.points == 0 and "followed by ReLU, not BatchNorm2d" in after_relu.message
    assert "keep the three convolutions" in ex04.grade(nn.Sequential(nn.Conv2d(1, 4, 3)), KEY).message
    # The old answer: conv_block's conv -> ReLU -> BN, with the package's widths.
    old = nn.Sequential(conv_block(1, 8), conv_block(8, 16), conv_block(16, 16))
    assert all(ex04.grade(old, key).points == 0 for key in KEYS)
    namespace = {"STUDENT": KEY, "ex04": ex04}
    exec("start = ex04.start()", namespace)
    assert [m.out_channels for m in namespace["start"] if isinstance(m, nn.Conv2d)] == widths


def test_gap_head_checks_log_probs_pooling_and_budget() -> None:
    n = ex06.given(KEY)
    c, side = n["channels"], n["side"]
    assert ex06.grade(nn.Sequential(nn.AvgPool2d(side), nn.Flatten(), nn.Linear(c, 10), nn.LogSoftmax(dim=1)),
                      KEY).passed
    linear = ex06.grade(nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, 10), nn.LogSoftmax(dim=1)), KEY)
    assert linear.points == 1 and "no global average pooling" in linear.message
    raw = ex06.grade(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)), KEY)
    assert raw.points == 1 and "not log-probabilities" in raw.message
    assert "returns a tuple" in ex06.grade(ReturnsTuple(), KEY).message


# --- the small models: cheap answers refused, advice that fits -----------------------------------------------


LOGISTIC = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))  # 7,850 parameters


@pytest.mark.parametrize("exercise", [ex07, ex08], ids=lambda e: e.name)
def test_cheap_small_models_are_refused_kindly(exercise: Exercise) -> None:
    result = exercise.grade(LOGISTIC, KEY)
    assert result.points == 0 and "logistic regression" in result.message and "convolutional" in result.message
    for course in (get_model("under5k"), get_model("under3762"), KnobNet(Knobs(widths=((4, 4), (4, 4))))):
        result = exercise.grade(course, KEY)
        assert result.points == 0 and "the course's own" in result.message and "design of your own" in result.message
    wrapped = nn.Sequential(get_model("under3762"))
    assert "the course's own LadderNet" in exercise.grade(wrapped, KEY).message


def test_a_separable_model_needs_separable_convolutions() -> None:
    plain = nn.Sequential(*plain_convs([8, 8], pool_after=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 10, 1),
                          nn.Flatten(), nn.LogSoftmax(dim=1))
    assert "depthwise-separable" in ex08.grade(plain, KEY).message


def test_the_rf_must_come_from_convolutions_not_a_linear_layer() -> None:
    # RF 5 before the Flatten, then a Linear over the whole map: under budget, yet it does not count.
    shallow = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(4),
                            nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.LogSoftmax(dim=1))
    result = ex07.grade(shallow, KEY)
    assert result.points == 1 and "before any Flatten or Linear its receptive field reaches 8 pixels" in result.message


@pytest.mark.slow  # ten students' layer tables
def test_an_old_one_liner_model_over_the_budget_gets_no_training() -> None:
    old = nn.Sequential(conv_block(1, 8, padding=1), conv_block(8, 12), conv_block(12, 16), nn.MaxPool2d(2),
                        conv_block(16, 8, kernel_size=1), conv_block(8, 12), conv_block(12, 16), conv_block(16, 12),
                        nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 10, 1, bias=False), nn.Flatten(), nn.LogSoftmax(dim=1))
    assert count_parameters(old) == 7_400
    for key in KEYS[:10]:
        result = ex07.grade(old, key)
        assert result.points == 1 and "over by" in result.message


def small_net(batch_norm: bool, dropout: float = 0.0) -> nn.Sequential:
    def block(c_in: int, c_out: int, kernel: int = 3, padding: int = 0) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=not batch_norm), nn.ReLU()]
        layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
        return layers + ([nn.Dropout2d(dropout)] if dropout else [])

    return nn.Sequential(*block(1, 8, padding=1), *block(8, 10), *block(10, 16), nn.MaxPool2d(2), *block(16, 8, 1),
                         *block(8, 12), *block(12, 12), nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 10, 1, bias=False),
                         nn.Flatten(), nn.LogSoftmax(dim=1))


def test_advice_matches_the_model() -> None:
    assert "Batch normalization after the convolutions helps" in advice(small_net(batch_norm=False))
    with_bn = advice(small_net(batch_norm=True))
    assert "already has batch normalization" in with_bn and "helps a fresh network" not in with_bn
    assert "dropout rate(s) 0.9 " in advice(small_net(batch_norm=True, dropout=0.9))
    linear = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3))
    assert "no activation" in advice(linear)
    narrow = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2))
    assert "bottleneck" in advice(narrow)


@pytest.mark.slow  # trains
def test_a_model_that_does_not_learn_gets_advice_for_what_it_lacks() -> None:
    stuck = ex07.grade(small_net(batch_norm=True, dropout=0.9), KEY)
    assert stuck.points == 2 and "not learning yet" in stuck.message
    assert "dropout rate(s) 0.9" in stuck.message and "Batch normalization after" not in stuck.message
    plain = ex07.grade(small_net(batch_norm=False), KEY)
    assert plain.points == 2 and "Batch normalization after the convolutions helps" in plain.message


# --- odd answers: explained, never crashed -------------------------------------------------------------------


class ReturnsTuple(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Exits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise SystemExit(3)


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("student bug")


class Interrupted(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt


def test_odd_modules_are_explained_not_crashed() -> None:
    assert "SystemExit" in ex03.grade(Exits(), KEY).message
    assert "took too long" in ex06.grade(Interrupted(), KEY).message
    assert "ZeroDivisionError: student bug" in ex03.grade(Broken(), KEY).message


@pytest.mark.parametrize("name", list(EXERCISES))
@pytest.mark.parametrize("answer", [None, "a string", 42, -1.5, [1, 2, 3], print, Broken(), nn.Linear(3, 3)],
                         ids=["None", "str", "int", "float", "list", "function", "raises", "linear"])
def test_checks_never_crash_on_wrong_types(name: str, answer: object) -> None:
    result = EXERCISES[name].grade(answer, KEY)
    assert not result.passed and result.message and 0 <= result.points <= result.max_points
    if answer is None:
        assert "not answered yet" in result.message
    elif name in MODEL_ANSWERS and not isinstance(answer, nn.Module):
        assert "nn.Module" in result.message


# --- the notebook side: check(), hints ---------------------------------------------------------------------


def run_in_notebook(code: str, **variables: object) -> dict[str, object]:
    namespace: dict[str, object] = {"STUDENT": KEY, **{name: EXERCISES[name] for name in EXERCISES}, **variables}
    exec(code, namespace)
    return namespace


def test_check_reads_the_notebook_and_returns_the_points(capsys: pytest.CaptureFixture[str]) -> None:
    answers = solutions(KEY, ["q02"])
    namespace = run_in_notebook("points = q02.check()", rf_and_jump=answers["q02"])
    assert namespace["points"] == 2 and capsys.readouterr().out == "Correct (2/2) - q02: all requirements met.\n"
    rf, jump = answers["q02"]
    namespace = run_in_notebook("points = q02.check()", rf_and_jump=(rf, jump * 3))
    assert namespace["points"] == 1 and capsys.readouterr().out.startswith("Not yet (1/2) - q02: the jump")


@pytest.mark.parametrize("name", list(EXERCISES))
def test_a_check_before_its_answer_cell_says_run_it_first(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = run_in_notebook(f"points = {name}.check()")
    assert namespace["points"] == 0
    out = capsys.readouterr().out
    assert out.startswith("Run the answer cell first") and f"`{EXERCISES[name].variable}`" in out
    assert len(out.splitlines()) == 1
    namespace = run_in_notebook(f"points = {name}.check()", **{EXERCISES[name].variable: None})
    assert namespace["points"] == 0 and "not answered yet" in capsys.readouterr().out


def test_hints_are_counted_and_the_last_one_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    for exercise in EXERCISES.values():
        exercise.hints_used = 0
    q02.hint()
    q02.hint()
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("Hint 1 of 3:") and second.startswith("Hint 2 of 3:") and first != second
    for _ in range(3):
        q02.hint()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("Hint 3 of 3:")
    assert q02.hints_used == 5 and sum(ex.hints_used for ex in EXERCISES.values()) == 5
    q02.hints_used = 0


def flat_numbers(answer: object) -> list[float]:
    """Return every number inside an answer (nested tuples, lists and sets), leaving out letters and flags."""
    if isinstance(answer, tuple | list | set | frozenset):
        return [x for part in answer for x in flat_numbers(part)]
    return [answer] if isinstance(answer, int | float) and not isinstance(answer, bool) else []


def numbers_in(text: str) -> set[float]:
    return {float(x.replace(",", "")) for x in re.findall(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w.])", text)}


@pytest.mark.parametrize("name", NUMERIC)
def test_hints_never_hold_the_answer(name: str) -> None:
    hints = EXERCISES[name]._hints
    assert len(hints) >= 2 and len(set(hints)) == len(hints)
    for key in KEYS[:15]:
        answer = solutions(key, [name])[name]
        values = flat_numbers(answer)
        for hint in hints:
            for value in values:
                assert not any(math.isclose(value, x, abs_tol=0.006) for x in numbers_in(hint)), (name, key, hint)
                assert not EXERCISES[name].grade(hint, key).passed


# --- the private copy the grader runs ------------------------------------------------------------------------


def test_the_exercises_work_as_the_graders_private_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, object] = {}
    exec(PRIVATE_COPY, namespace)  # what the grading kernel runs before any answer cell
    sources = Checks.load().sources
    assert [name for name, _ in sources] == ["mnist_lesson.grading.exercise", "mnist_lesson.grading.judgement",
                                             "mnist_lesson.grading.exercises"]
    module = namespace["private_copy"](sources, "_private_checks_")
    answers = solutions(KEY, ["q02", "ex04", "q04b", "q07e"])
    public = {name: EXERCISES[name].grade(answer, KEY) for name, answer in answers.items()}
    # An answer cell that replaces the public machinery (the Exercise class the exercises are made of) reaches
    # none of the copy: the copy's exercises are made of the copy's own Exercise.
    monkeypatch.setattr(Exercise, "grade", lambda self, answer, student="": Result(self.name, self.max_points,
                                                                                    self.max_points, "forged"))
    assert EXERCISES["q02"].grade(None, KEY).message == "forged"
    for name, answer in answers.items():
        private = module.EXERCISES[name].grade(answer, KEY)
        assert (private.points, private.max_points, private.message) == \
            (public[name].points, public[name].max_points, public[name].message) and private.passed
    assert module.EXERCISES["ex02"].grade(CHEAP_EX02["1-channel convs"], KEY).points == 0
    assert module.EXERCISES["q02"].grade(None, KEY).message.startswith("not answered yet")
    assert "_private_checks_0" not in sys.modules and "_private_checks_1" not in sys.modules


# --- the notebooks: nbgrader metadata, the student version ---------------------------------------------------


def grading(cell: nbformat.NotebookNode) -> dict[str, object]:
    return cell.metadata.get("nbgrader", {})


@pytest.mark.parametrize("path", [SOURCE, STUDENT_NOTEBOOK], ids=["instructor", "student"])
def test_cells_carry_the_contracts_nbgrader_metadata(path: Path) -> None:
    from nbgrader.nbgraderformat import MetadataValidator

    nb = nbformat.read(path, as_version=4)
    MetadataValidator().validate_nb(nb)
    by_id = {grading(c)["grade_id"]: c for c in nb.cells if grading(c)}
    expect = {"grade": False, "locked": True, "solution": False, "schema_version": 3}
    assert by_id["imports"].source == PRELUDE and {k: grading(by_id["imports"])[k] for k in expect} == expect
    assert {k: grading(by_id["student"])[k] for k in ("solution", "grade", "locked")} == \
        {"solution": True, "grade": False, "locked": False}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code.index(by_id["student"]) < code.index(by_id["imports"])  # as the grader runs them
    for name, exercise in EXERCISES.items():
        answer, check = by_id[f"{name}-answer"], by_id[f"{name}-check"]
        assert {k: grading(answer)[k] for k in ("solution", "grade", "locked")} == \
            {"solution": True, "grade": False, "locked": False}
        assert answer.source.splitlines()[0].startswith(f"# Answer {name}:")
        assert re.search(rf"^{exercise.variable} = ", answer.source, re.MULTILINE)
        assert grading(check) == {"grade": True, "grade_id": f"{name}-check", "locked": True, "solution": False,
                                  "points": exercise.max_points, "schema_version": 3}
        assert check.source == f"{name}.check()"
        assert nb.cells.index(by_id[f"{name}-question"]) < nb.cells.index(answer) < nb.cells.index(check)


def test_the_instructor_notebook_has_no_badge_and_sits_outside_notebooks() -> None:
    nb = nbformat.read(SOURCE, as_version=4)
    assert "colab-badge" not in nbformat.writes(nb) and "google.colab" not in nbformat.writes(nb)
    assert not (REPO / "notebooks" / "student").exists()
    assert all(BEGIN in source and END in source for source in answer_cells().values())


def test_student_version_removes_solutions_and_keeps_the_rest() -> None:
    source = nbformat.read(SOURCE, as_version=4)
    student = student_version(source, badge("exercises.ipynb"))
    text = nbformat.writes(student)
    assert BEGIN not in text and END not in text
    assert student.cells[0].source == source.cells[0].source  # nbgrader's locked title cell, as it locked it
    assert student.cells[1].cell_type == "markdown" and student.cells[1].source == badge("exercises.ipynb")
    for name, cell in answer_cells(SOURCE).items():
        solution = cell.split(BEGIN)[1].split(END)[0].strip()
        stub = next(c.source for c in student.cells if grading(c).get("grade_id") == f"{name}-answer")
        assert solution not in text and stub == cell.split(BEGIN)[0].strip()
        assert stub.endswith(f"{EXERCISES[name].variable} = None")
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    locked = [c for c in student.cells if grading(c).get("locked")]
    assert locked and all(c.metadata["editable"] is False and c.metadata["deletable"] is False for c in locked)


def test_odd_markers_never_leak_a_solution() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = None\n{BEGIN}  \r\nx = 'secret 1'\n{END} # done\ny = 2\n"
                                          f"  {BEGIN}\n  z = 'secret 2'\n  {END}")]
    source = student_version(nb).cells[0].source
    assert "secret" not in source and source == "x = None\ny = 2"
    nb.cells = [nbformat.v4.new_code_cell(f"x = 1  {BEGIN}\nx = 'secret'\n{END}")]
    with pytest.raises(ValueError, match="markers left"):
        student_version(nb)


def test_unbalanced_markers_are_refused() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = None\n{BEGIN}\nx = 1\n")]
    with pytest.raises(ValueError, match="unbalanced"):
        student_version(nb)


def test_committed_student_version_is_up_to_date(tmp_path: Path) -> None:
    fresh = nbformat.read(write_student_version(SOURCE, tmp_path / "notebooks" / "exercises.ipynb"), as_version=4)
    committed = nbformat.read(STUDENT_NOTEBOOK, as_version=4)

    def sources(nb: nbformat.NotebookNode) -> list[tuple[str, str, dict[str, object]]]:
        return [(c.cell_type, c.source, grading(c)) for c in nb.cells]

    assert sources(committed) == sources(fresh), \
        "stale: run `python -m mnist_lesson student`, then benchmarks/run_notebooks.py on notebooks/exercises.ipynb"


def test_the_stored_student_version_shows_no_tracebacks() -> None:
    nb = nbformat.read(STUDENT_NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    checked = [c for c in code if grading(c).get("grade")]
    assert len(checked) == len(EXERCISES)
    assert all("not answered yet" in "".join(o.get("text", "") for o in c.outputs) for c in checked)



def test_one_conv_repeated_is_refused_and_no_rf_beyond_the_rules_scores() -> None:
    """One nn.Conv2d object used twelve times counts its parameters once but adds RF every call: refused, whatever
    the student's numbers (it used to score 3/3 with RF 52 where the rules allow at most 20)."""
    for key in KEYS[:10]:
        width = ex02.given(key)["width"]
        conv = nn.Conv2d(width, width, 3)
        repeated = nn.Sequential(nn.Conv2d(1, width, 3), *[conv] * 12)
        result = ex02.grade(repeated, key)
        assert result.points == 0 and "used more than once" in result.message, (key, result.message)


def test_a_transition_with_a_layer_the_check_cannot_vouch_for_is_refused() -> None:
    """An average pool, or a module of the student's own, gives RF 2 and jump 2 too: the mixing point needs a 1x1
    convolution and a max-pool the check knows."""

    class Mystery(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 2)

    for key in KEYS[:5]:
        n = ex03.given(key)
        a, b = n["c_in"], n["c_out"]
        assert ex03.grade(nn.Sequential(nn.Conv2d(a, b, 1), nn.ReLU(), nn.MaxPool2d(2)), key).passed
        averaged = ex03.grade(nn.Sequential(nn.Conv2d(a, b, 1), nn.AvgPool2d(2)), key)
        assert averaged.points == 1 and "not part of a transition" in averaged.message, averaged.message
        try:
            mystery = ex03.grade(nn.Sequential(nn.Conv2d(a, b, 1), Mystery()), key)
        except Exception as exc:  # noqa: BLE001 (an unsupported layer may be refused by the RF table itself)
            assert "Mystery" in str(exc)
        else:
            assert mystery.points <= 1, mystery.message


def test_student_never_overwrites_a_solution_notebook_and_refuses_a_non_notebook(tmp_path: Path) -> None:
    from mnist_lesson.config import UsageError

    copy = tmp_path / "instructor.ipynb"
    copy.write_bytes(SOURCE.read_bytes())
    before = copy.read_bytes()
    with pytest.raises(UsageError, match="the instructor's source itself"):
        write_student_version(copy, copy)
    other = tmp_path / "other.ipynb"
    other.write_bytes(SOURCE.read_bytes())
    with pytest.raises(UsageError, match="holds solutions"):
        write_student_version(copy, other)
    assert copy.read_bytes() == before and other.read_bytes() == before
    text = tmp_path / "notes.txt"
    text.write_text("SECRET grading notes\n")
    with pytest.raises(UsageError, match="is not a Jupyter notebook") as refused:
        write_student_version(text, tmp_path / "out.ipynb")
    assert "SECRET" not in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "out.ipynb").exists()
    written = write_student_version(copy, tmp_path / "student.ipynb")
    write_student_version(copy, written)  # a student version may be rewritten
    assert BEGIN not in written.read_text()


def test_points_live_in_two_places_that_must_agree(tmp_path: Path) -> None:
    """The instructor's notebook gives each check cell its exercise's max_points; a change to one place only is
    refused by `student` before anything is written, naming the exercise."""
    from mnist_lesson.config import UsageError
    from mnist_lesson.grading.student_notebook import points_mismatches

    source = nbformat.read(SOURCE, as_version=4)
    assert points_mismatches(source, {name: ex.max_points for name, ex in EXERCISES.items()}) == []
    for cell in source.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "ex07-check":
            cell.metadata["nbgrader"]["points"] = 6
    changed = tmp_path / "instructor.ipynb"
    nbformat.write(source, changed)
    with pytest.raises(UsageError, match="ex07: 4 point") as refused:
        write_student_version(changed, tmp_path / "student.ipynb")
    assert "docs/exercises.md" in str(refused.value) and not (tmp_path / "student.ipynb").exists()
    others = points_mismatches(source, {"ex07": 6, "new": 1})
    assert "new: no nbgrader check cell 'new-check' in the notebook" in others
    assert "ex08: a check cell 'ex08-check' for an exercise grading/exercises.py does not have" in others


# --- the exercises of judgement (grading/judgement.py) ------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS[:10])
def test_the_convolution_and_batch_norm_by_hand_agree_with_torch(key: str) -> None:
    n = q04b.given(key)
    conv = nn.Conv2d(1, 1, 3)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(n["kernel"], dtype=torch.float32).view(1, 1, 3, 3))
        conv.bias.fill_(n["bias"])
        bn.running_mean.fill_(n["mean"])
        bn.running_var.fill_(n["var"])
        bn.weight.fill_(n["weight"])
        bn.bias.fill_(n["shift"])
        image = torch.tensor(n["image"], dtype=torch.float32).view(1, 1, 4, 4)
        conv_out = conv(image)
        bn_out = bn.eval()(conv_out)
    assert conv_out[0, 0].tolist() == conv_output(n) and bn_out[0, 0].tolist() == bn_output(n)
    assert q04b.grade((conv_out, bn_out.numpy()), key).passed  # tensors and numpy arrays are read too


def test_the_convolution_by_hand_explains_the_usual_slips() -> None:
    n = q04b.given(KEY)
    conv, bn = conv_output(n), bn_output(n)
    no_bias = [[x - n["bias"] for x in row] for row in conv]
    if n["bias"]:
        result = q04b.grade((no_bias, bn), KEY)
        assert result.points == 1 and "leaves out the bias" in result.message
    wrong_conv = [[x + 1 for x in row] for row in conv]
    follows = [[n["weight"] * (x - n["mean"]) / n["std"] + n["shift"] for x in row] for row in wrong_conv]
    result = q04b.grade((wrong_conv, follows), KEY)
    assert result.points == 0 and "follows from your CONV" in result.message
    result = q04b.grade((conv, [[x + 1 for x in row] for row in bn]), KEY)
    assert result.points == 1 and "running statistics" in result.message
    for odd in ("lots", (conv, "bn"), ([1, 2, 3], bn), (conv, [[1, 2], [3, "x"]])):
        result = q04b.grade(odd, KEY)
        assert not result.passed and result.message, odd


@pytest.mark.slow  # reads the MNIST labels
def test_the_validation_counts_are_the_labels_of_the_validation_split() -> None:
    from mnist_lesson.loaders import load_split, split_validation

    _, (_, labels) = split_validation(*load_split(train=True))
    assert tuple(torch.bincount(labels, minlength=10).tolist()) == VALIDATION_COUNTS
    # notebook 03's recorded first epoch: 10.64% on validation, digit 1's share
    first_epoch = recorded_curve("transitions", 0, 1)["val"][0]
    assert round(100 * VALIDATION_COUNTS[1] / sum(VALIDATION_COUNTS), 2) == first_epoch


def test_the_stuck_model_question_reads_its_parts() -> None:
    n = q03b.given(KEY)
    share = 100 * VALIDATION_COUNTS[n["digit"]] / sum(VALIDATION_COUNTS)
    assert q03b.grade((1, round(share, 2)), KEY).passed and q03b.grade(("1", share / 100), KEY).passed
    wrong_digit = q03b.grade((7, round(share, 2)), KEY)
    assert wrong_digit.points == 1 and "is not the digit" in wrong_digit.message
    assert q03b.grade((1, round(share, 2) + 0.5), KEY).points == 1
    assert q03b.grade((1, 2, 3), KEY).points == 0


def test_the_recorded_curves_fit_the_roles_the_question_gives_them() -> None:
    """Every run the curves question can show is read from design_runs.jsonl and fits its role by the stated rules,
    and no other: one overfits, one is still learning, one does neither."""
    for run in OVERFITTING:
        curve = recorded_curve(*run)
        assert len(curve["val"]) == run[2] and overfits(curve) and not still_learning(curve), run
        assert len(epochs_to_keep(curve)) == 1 and epochs_to_keep(curve)[0] <= run[2] - 2, run  # well before the end
    for run in STILL_LEARNING:
        curve = recorded_curve(*run)
        assert still_learning(curve) and not overfits(curve), run
    for run in NEITHER:
        curve = recorded_curve(*run)
        assert len(curve["val"]) >= 4 and not still_learning(curve) and not overfits(curve), run


@pytest.mark.parametrize("key", KEYS[:10])
def test_the_curves_question_has_one_answer_and_gives_partial_credit(key: str) -> None:
    runs = q05b.given(key)["runs"]
    over = [letter for letter, c in runs.items() if overfits(c)]
    learning = [letter for letter, c in runs.items() if still_learning(c)]
    assert len(over) == 1 and len(learning) == 1 and over != learning
    keep = epochs_to_keep(runs[over[0]])[0]
    assert q05b.grade((over[0].lower(), learning[0], keep), key).passed
    assert q05b.grade((over[0], learning[0], keep + 1), key).points == 2
    assert q05b.grade((learning[0], over[0], keep), key).points == 1
    assert "letters" in q05b.grade(("Z", learning[0], keep), key).message


@pytest.mark.parametrize("key", KEYS[:20])
def test_the_ablation_question_agrees_with_the_courses_compare(key: str) -> None:
    from mnist_lesson.studies import DesignSummary, compare

    n = q07d.given(key)
    base = DesignSummary("base", "base", 0, dict(enumerate(n["baseline"])), {})
    real = set()
    for letter, row in n["changes"].items():
        after = DesignSummary(letter, row["change"], 0, dict(enumerate(row["seeds"])), {})
        if "larger than the seed-to-seed noise" in compare(base, after):
            real.add(letter)
    assert real == {x for x, clear in ablation_verdicts(n).items() if clear}
    keep = max((x for x in real if statistics.mean(n["changes"][x]["seeds"]) > base.mean),
               key=lambda x: statistics.mean(n["changes"][x]["seeds"]))
    assert q07d.grade((real, keep.upper()), key).passed
    assert q07d.grade(("".join(sorted(real)), keep), key).passed  # a string of letters is read as the set
    assert q07d.grade((real | {"a", "b", "c", "d"} if len(real) < 4 else set(), keep), key).points == 1
    assert "not one of the changes" in q07d.grade(({"z"}, keep), key).message


def test_the_leak_question_varies_and_never_takes_the_final_report_for_the_leak() -> None:
    lines = set()
    for key in KEYS:
        n = q07e.given(key)
        line = leak_line(n)
        lines.add(line)
        assert "test_loader" in n["lines"][line - 1] and line < len(n["lines"])
        assert n["lines"][-1].startswith("print('test accuracy:'")
        solution = solutions(key, ["q07e"])["q07e"]
        assert q07e.grade(solution, key).passed
        assert q07e.grade((solution[0], len(n["lines"])), key).points == 1  # the final report is not the leak
        assert q07e.grade((" VAL " if solution[0] == "validation" else solution[0].upper(), line), key).passed
    assert len(lines) >= 3
    assert "'train', 'validation' or 'test'" in q07e.grade(("the dev set", 3), KEY).message


@pytest.mark.slow  # trains the tiny model (a few seconds)
def test_the_eval_mode_bug_is_measured_and_only_the_fix_passes() -> None:
    answers = solutions(KEY, ["ex05"])["ex05"]
    function, before, after = answers
    assert ex05.grade(answers, KEY).passed and after > before + 20  # the bug costs far more than the noise
    from mnist_lesson.grading.judgement import _measured

    assert after == _measured(ex05.given(KEY))[1]  # in one process, the solution measures what the check does
    namespace: dict[str, object] = {"torch": torch}
    from mnist_lesson.grading.judgement import BUGGY_EVALUATE

    exec(BUGGY_EVALUATE, namespace)
    unfixed = ex05.grade((namespace["evaluate"], before, after), KEY)
    assert unfixed.points == 2 and "running statistics" in unfixed.message
    swapped = ex05.grade((function, after, before), KEY)
    assert swapped.points == 1 and "BEFORE" in swapped.message and "AFTER" in swapped.message

    def raises(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        raise ValueError("student bug")

    assert "raised ValueError: student bug" in ex05.grade((raises, before, after), KEY).message
    assert "should be a function" in ex05.grade((42, before, after), KEY).message
    namespace = {"STUDENT": KEY, "ex05": ex05}
    exec("net, images, labels = ex05.start()", namespace)
    assert namespace["net"].training and len(namespace["images"]) == len(namespace["labels"])
