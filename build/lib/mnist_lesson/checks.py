"""Exercise checks students run themselves: `ex02.check(answer)`, `ex02.hint()`.

Each exercise checks a real design task against the same tools the course uses (the receptive-field
table, the parameter count, a short smoke-mode training). A failure says what is wrong in the
student's terms without giving the answer away; any answer, even of the wrong type, gets an
explanation rather than a traceback. Introduced in notebooks/exercises.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.receptive_field import UnsupportedLayerError, layer_table


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


class Exercise:
    """One exercise: `check(answer)` prints the verdict, `grade(answer)` returns it, `hint()` prints a hint."""

    def __init__(self, name: str, title: str, variable: str, check: Callable[[object], list[str]], hints: list[str],
                 max_points: int = 1) -> None:
        self.name, self.title, self._check, self._hints, self.max_points = name, title, check, hints, max_points
        self.variable = variable  # the notebook variable that holds the answer (the grader reads it)
        self._hints_shown = 0

    def grade(self, answer: object) -> Result:
        """Return the Result for `answer` without printing; never raises."""
        try:
            problems = self._check(answer)
        except KeyboardInterrupt:  # the grader interrupts a check that runs too long
            problems = ["checking it was stopped because it took too long (does forward() loop?)"]
        except BaseException as exc:  # a student's module may fail in any way, even sys.exit(): explain
            problems = [f"running your answer raised {type(exc).__name__}: {str(exc)[:300]}"]
        if problems:
            return Result(self.name, 0, self.max_points, " ".join(problems))
        return Result(self.name, self.max_points, self.max_points, "all requirements met.")

    def check(self, answer: object) -> None:
        """Print whether `answer` meets the requirements, and what is wrong if not (use grade() for a Result)."""
        print(self.grade(answer))

    def hint(self) -> None:
        """Print the next hint (they get more specific each time)."""
        text = self._hints[min(self._hints_shown, len(self._hints) - 1)]
        self._hints_shown += 1
        print(f"Hint: {text}")


def _module(answer: object, what: str) -> nn.Module:
    if answer is None:
        raise _Explained(f"your {what} is None: build it and assign it before checking.")
    if not isinstance(answer, nn.Module):
        raise _Explained(f"your {what} should be a torch nn.Module (for example nn.Sequential(...)), "
                         f"not a {type(answer).__name__}.")
    return answer


class _Explained(Exception):
    """A problem already phrased for the student."""


def _explain(check: Callable[[object], list[str]]) -> Callable[[object], list[str]]:
    def wrapped(answer: object) -> list[str]:
        try:
            return check(answer)
        except _Explained as exc:
            return [str(exc)]
        except UnsupportedLayerError as exc:
            return [f"the receptive-field table cannot read your model: {exc}"]

    return wrapped


def _output(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _Explained(f"your model fails on a batch of shape {(2, *shape)}: {first}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise _Explained(f"your model returns a {type(out).__name__}, not a tensor; return the output itself.")
    return out


# --- notebook 02: a block designed from its receptive field ------------------------------------------

RF_TARGET, RF_BUDGET = 16, 6_000


@_explain
def _check_rf_block(answer: object) -> list[str]:
    block = _module(answer, "block")
    table = layer_table(block, (1, 28, 28))
    problems = []
    if table.final_rf < RF_TARGET:
        problems.append(f"its receptive field is {table.final_rf} pixels and must be at least {RF_TARGET}: each "
                        "3x3 conv adds 2 x jump, and a max-pool doubles the jump for every layer after it.")
    if table.total_params > RF_BUDGET:
        heaviest = max(table.rows, key=lambda row: row.params)
        problems.append(f"it has {table.total_params:,} parameters, over the limit of {RF_BUDGET:,}; the heaviest "
                        f"layer is {heaviest.name} ({heaviest.kind}, {heaviest.params:,}).")
    pools = [row for row in table.rows if row.kind == "MaxPool2d"]
    if len(pools) > 1:
        problems.append(f"it uses {len(pools)} max-pools; this exercise allows one.")
    others = sorted({row.kind for row in table.rows if "Pool" in row.kind and row.kind != "MaxPool2d"})
    if others:
        problems.append(f"it uses {', '.join(others)}; this exercise allows only one MaxPool2d for pooling.")
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and (m.kernel_size != (3, 3) or m.dilation != (1, 1) or m.stride != (1, 1)):
            problems.append(f"it has a {m.kernel_size[0]}x{m.kernel_size[1]} conv (dilation {m.dilation[0]}, stride "
                            f"{m.stride[0]}); this exercise is about plain 3x3 convolutions, stride 1.")
            break
    return problems


ex02 = Exercise("ex02 receptive field", "a block with RF >= 16 under 6,000 parameters", "block", _check_rf_block, [
    "Write the RF after each layer on paper: 3, 5, 7 for three 3x3 convs; a 2x2 pool then makes every "
    "further 3x3 conv add 4 instead of 2.",
    "Keep the channels small before the pool: the parameter cost of a 3x3 conv is in x out x 9.",
])


# --- notebook 03: a 1x1 transition ----------------------------------------------------------------

@_explain
def _check_transition(answer: object) -> list[str]:
    block = _module(answer, "transition")
    out = _output(block, (32, 12, 12))
    problems = []
    if tuple(out.shape[1:]) != (8, 12, 12):
        problems.append(f"it turns a 32x12x12 map into {'x'.join(map(str, out.shape[1:]))}; it must give 8x12x12 "
                        "(fewer channels, same size).")
    table = layer_table(block, (32, 12, 12))
    if table.final_rf != 1:
        problems.append(f"it looks at {table.final_rf}x{table.final_rf} neighbourhoods; a transition mixes channels "
                        "at each position only (receptive field 1).")
    if count_parameters(block) > 300:
        problems.append(f"it has {count_parameters(block):,} parameters; a transition this size needs at most 300.")
    return problems


ex03 = Exercise("ex03 transition", "32 -> 8 channels, same size, RF 1", "transition", _check_transition, [
    "Which kernel size leaves the receptive field unchanged?",
    "A 1x1 convolution with bias=False from 32 to 8 channels has 32 x 8 weights.",
])


# --- notebook 04: batch normalization -------------------------------------------------------------

def plain_block() -> nn.Sequential:
    """Return the block exercises 04 and 05 start from: three 3x3 convs with ReLU, no normalization."""
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.ReLU())


def _convs_followed_by(block: nn.Module, kind: type[nn.Module], what: str) -> list[str]:
    modules = [m for m in block.modules() if not list(m.children())]
    problems = []
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if [tuple(modules[i].weight.shape) for i in convs] != [(8, 1, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3)]:
        problems.append("keep the three convolutions of plain_block() as they are (1->8, 8->16, 16->16, 3x3).")
        return problems
    for n, i in enumerate(convs):
        end = convs[n + 1] if n + 1 < len(convs) else len(modules)
        found = [m for m in modules[i + 1:end] if isinstance(m, kind)]
        if not found:
            problems.append(f"conv {n + 1} ({modules[i].in_channels}->{modules[i].out_channels}) has no {what} "
                            "before the next conv.")
    return problems


@_explain
def _check_bn_block(answer: object) -> list[str]:
    block = _module(answer, "bn_block")
    problems = _convs_followed_by(block, nn.BatchNorm2d, "BatchNorm2d")
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d) and m.num_features not in (8, 16):
            problems.append(f"a BatchNorm2d has num_features={m.num_features}; it must match its conv's channels.")
    if not problems:
        _output(block, (1, 28, 28))
    return problems


ex04 = Exercise("ex04 batch norm", "BatchNorm after every conv of plain_block()", "bn_block", _check_bn_block, [
    "nn.BatchNorm2d(C) needs C, the number of channels of the conv before it.",
    "The course's order is conv -> ReLU -> BatchNorm2d (mnist_lesson.models.conv_block).",
])


# --- notebook 05: dropout ---------------------------------------------------------------------------

@_explain
def _check_dropout_block(answer: object) -> list[str]:
    block = _module(answer, "dropout_block")
    problems = _convs_followed_by(block, nn.BatchNorm2d, "BatchNorm2d") or \
        _convs_followed_by(block, nn.Dropout2d, "Dropout2d")
    rates = [m.p for m in block.modules() if isinstance(m, nn.Dropout2d)]
    if any(not 0 < p <= 0.2 for p in rates):
        problems.append(f"dropout rates {rates}: keep each between 0 (exclusive) and 0.2; more hurts a small network.")
    if not problems:
        was_training = block.training
        block.eval()
        x = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            same = torch.equal(block(x), block(x))
        block.train(was_training)
        if not same:
            problems.append("in eval mode it gives different outputs for the same input; dropout must switch "
                            "off in eval mode (use nn.Dropout2d, not a hand-made random mask).")
    return problems


ex05 = Exercise("ex05 dropout", "Dropout2d after every conv block", "dropout_block", _check_dropout_block, [
    "nn.Dropout2d(p) zeroes whole channels; put one after each conv's activation or normalization.",
    "A rate around 0.05-0.1 is typical for networks this small.",
])


# --- notebook 06: a GAP head -----------------------------------------------------------------------

GAP_BUDGET = 200


@_explain
def _check_gap_head(answer: object) -> list[str]:
    head = _module(answer, "head")
    out = _output(head, (16, 4, 4))
    problems = []
    if out.ndim != 2 or out.shape[1] != 10:
        problems.append(f"for a batch of 16x4x4 maps it returns shape {tuple(out.shape)}; it must return (batch, 10).")
    elif not torch.allclose(out.exp().sum(dim=1), torch.ones(len(out)), atol=1e-4):
        problems.append("its outputs are not log-probabilities: end with log_softmax (nn.LogSoftmax(dim=1)).")
    if not any(isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in head.modules()):
        problems.append("it has no average pooling layer: average the 4x4 positions away first.")
    if count_parameters(head) >= GAP_BUDGET:
        problems.append(f"it has {count_parameters(head):,} parameters; stay under {GAP_BUDGET} (a 4x4 kernel or a "
                        "Linear over "
                        "all 256 positions costs far more).")
    return problems


ex06 = Exercise("ex06 global average pooling", "a 16x4x4 -> 10 head under 200 parameters", "head", _check_gap_head, [
    "After nn.AdaptiveAvgPool2d(1) every channel is one number; what maps 16 numbers to 10 cheaply?",
    "Count the parameters of a 1x1 convolution from 16 to 10 channels, and end with log-probabilities.",
])


# --- notebook 07: a small model that learns ---------------------------------------------------------

SMALL_BUDGET, SMALL_ACCURACY = 8_000, 20.0  # chance is 10%: after a smoke run a good model is near 35%


@_explain
def _check_small_model(answer: object) -> list[str]:
    from mnist_lesson.config import Recipe
    from mnist_lesson.runs import pick_device, train_recipe

    model = _module(answer, "model")
    problems = []
    if count_parameters(model) >= SMALL_BUDGET:
        problems.append(f"it has {count_parameters(model):,} parameters; stay under {SMALL_BUDGET:,}.")
    table = layer_table(model, (1, 28, 28))
    if not table.covers_input:
        problems.append(f"its receptive field is {table.final_rf} pixels; it must cover the 28x28 digit.")
    out = _output(model, (1, 28, 28))
    if out.shape != (2, 10):
        problems.append(f"it returns shape {tuple(out.shape)} for two images; it must return (2, 10) log-probs.")
    elif not torch.allclose(out.exp().sum(dim=1), torch.ones(2), atol=1e-4):
        problems.append("its outputs are not log-probabilities: end with log_softmax (nn.LogSoftmax(dim=1)).")
    if problems:
        return problems
    # A short, fixed training run: smoke mode, one epoch over a few batches, on a copy of the model.
    import copy

    def trainable_copy() -> nn.Module:
        trial = copy.deepcopy(model)
        for m in trial.modules():
            if hasattr(m, "reset_parameters"):  # the same start for the same architecture: a fair, repeatable check
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # A plain average of the few batches seen: the default running average would still be
                # mostly its initial values after so few steps, and evaluation would measure that instead.
                m.reset_running_stats()
                m.momentum = None
        return trial

    _, history = train_recipe(trainable_copy, Recipe(epochs=1, lr=0.01, batch_size=128), device=pick_device(),
                              seed=0, progress=False, smoke=True)
    accuracy = history.epochs[-1]["test_acc"]
    if accuracy < SMALL_ACCURACY:
        problems.append(f"after a short smoke-mode training it reaches {accuracy:.1f}% on the test batches; it must "
                        f"reach {SMALL_ACCURACY:.0f}% (chance is 10%), so it is not learning yet. Batch "
                        "normalization helps a fresh network learn fast.")
    return problems


ex07 = Exercise("ex07 small model", "< 8,000 parameters, RF covers the digit, learns", "model", _check_small_model, [
    "Start from notebook 06's ideas with fewer channels: 3x3 convs, one max-pool, BN, a GAP head.",
    "Check your RF with layer_table(model) and your size with count_parameters(model) before training.",
])

EXERCISES: dict[str, Exercise] = {ex.name.split()[0]: ex for ex in (ex02, ex03, ex04, ex05, ex06, ex07)}
