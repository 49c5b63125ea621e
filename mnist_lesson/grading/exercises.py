"""The exercises of notebooks/exercises.ipynb, one or more per notebook, each with its numbers, its question, its
check and its hints; EXERCISES lists them, PRELUDE is the exercise notebook's import cell.

Every exercise asks for a decision the package does not hand over: a number worked out by hand (a receptive field,
a parameter count, an output size, a schedule), or a network built from torch layers under a budget that binds.
The exercises that ask for judgement (curves, splits, the eval-mode bug, an ablation table, a convolution and a
batch norm by hand, a model stuck on one digit) live in mnist_lesson.grading.judgement and are listed here too.
What an exercise is, and the readers its check uses, live in mnist_lesson.grading.exercise. This module and those
two are the exercises' interface with the grader (mnist_lesson.grading.contract): EXERCISES, PRELUDE, student_key,
and COPIED_WITH. The grader execs the three sources into fresh modules (its private copy), so they import the rest
of the package by absolute name only.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
from collections.abc import Callable
from typing import Any

from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import Recipe
from mnist_lesson.device import pick_device
from mnist_lesson.grading.exercise import (
    ACTIVATIONS,
    POINTWISE,
    Exercise,
    Explained,
    Marks,
    Numbers,
    as_module,
    as_pair,
    as_real,
    as_whole,
    as_yes_no,
    caller_namespace,
    conv_rf,
    describe,
    grade_parts,
    leaf_modules,
    log_probs_problem,
    output_on_zeros,
    parameter_problem,
    rows_before_flat,
    rows_with_modules,
    show_key,
    student_key,
    table_of,
)
from mnist_lesson.grading.judgement import ex05, q03b, q04b, q05b, q07d, q07e

__all__ = ["EXERCISES", "PRELUDE", "COPIED_WITH", "student_key", "show_key", "q01", "q02", "ex02", "q03", "q03b",
           "ex03", "q04", "q04b", "ex04", "q05", "q05b", "ex05", "ex06", "q07a", "q07b", "q07c", "q07d", "q07e", "ex07",
           "q08", "ex08"]

SIDE = 28  # MNIST images are 28x28
# The modules whose code the checks run: the grader's private copy copies them too, before this one.
COPIED_WITH = ("mnist_lesson.grading.exercise", "mnist_lesson.grading.judgement")

# The exact source of the exercise notebook's import cell (the grader runs it before the answer cells).
PRELUDE = """\
# The course's checking and inspection tools, and torch: all the exercises need.
import torch
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.grading.exercises import (
    ex02,
    ex03,
    ex04,
    ex05,
    ex06,
    ex07,
    ex08,
    q01,
    q02,
    q03,
    q03b,
    q04,
    q04b,
    q05,
    q05b,
    q07a,
    q07b,
    q07c,
    q07d,
    q07e,
    q08,
    show_key,
)
from mnist_lesson.receptive_field import layer_table"""


def _format_stack(layers: list[dict[str, int]], with_padding: bool) -> str:
    lines = []
    for i, layer in enumerate(layers, start=1):
        if layer["kind"] == "pool":
            lines.append(f"  {i}. nn.MaxPool2d(2)")
        else:
            k = layer["k"]
            extra = f", padding={layer['p']}, stride={layer['s']}" if with_padding else ""
            lines.append(f"  {i}. nn.Conv2d(..., ..., kernel_size={k}{extra})")
    return "\n".join(lines)


# --- notebook 01: an output size --------------------------------------------------------------------------


def output_side(layers: list[dict[str, int]], side: int = SIDE) -> int:
    """Return the side of the map after a stack of {"kind": "conv", "k", "p", "s"} / {"kind": "pool"} layers."""
    for layer in layers:
        if layer["kind"] == "pool":
            side //= 2
        else:
            side = (side + 2 * layer["p"] - layer["k"]) // layer["s"] + 1
        if side < 1:
            return 0
    return side


def _make_q01(rng: random.Random) -> Numbers:
    while True:
        layers: list[dict[str, Any]] = []
        for _ in range(rng.randint(4, 6)):
            if layers and layers[-1]["kind"] == "conv" and rng.random() < 0.3:
                layers.append({"kind": "pool"})
            else:
                k = rng.choice([3, 3, 5])
                layers.append({"kind": "conv", "k": k, "p": rng.randint(0, k // 2), "s": rng.choice([1, 1, 1, 2])})
        shrinks = any(layer.get("s") == 2 or layer["kind"] == "pool" for layer in layers)
        if output_side(layers) >= 3 and shrinks:
            return {"layers": layers}


def _render_q01(n: Numbers) -> str:
    return (f"A 1x{SIDE}x{SIDE} image goes through these layers, in this order (activations left out):\n"
            f"{_format_stack(n['layers'], with_padding=True)}\n"
            "What is the side (height = width) of the map that comes out? Answer: output_side = a whole number.")


def _check_q01(answer: object, n: Numbers) -> Marks:
    given = as_whole(answer, "output_side")
    if given == output_side(n["layers"]):
        return 1, []
    return 0, [f"{given} is not the side that comes out. Follow the side layer by layer; remember that each "
               "division rounds down."]


q01 = Exercise("q01", "an output size", "output_side", 1, _make_q01, _render_q01, _check_q01, [
    "Go layer by layer and write down the side after each one; a 2x2 max-pool halves it, rounding down.",
    "For a convolution: out = floor((in + 2 x padding - kernel) / stride) + 1.",
    "Check your hand computation: build the same layers with nn and read the output column of layer_table, or "
    "pass torch.zeros(1, 1, 28, 28) through them.",
])


# --- notebook 02: receptive field and jump; the most receptive field for a budget ---------------------------


def rf_and_jump(layers: list[dict[str, int]]) -> tuple[int, int]:
    """Return the receptive field and jump after a stack of {"kind": "conv", "k": k} / {"kind": "pool"} layers."""
    rf, jump = 1, 1
    for layer in layers:
        k, s = (2, 2) if layer["kind"] == "pool" else (layer["k"], layer.get("s", 1))
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


def _make_q02(rng: random.Random) -> Numbers:
    while True:
        layers = [{"kind": "conv", "k": rng.choice([3, 3, 5])}]
        for _ in range(rng.randint(4, 6)):
            if layers[-1]["kind"] == "conv" and rng.random() < 0.3:
                layers.append({"kind": "pool"})
            else:
                layers.append({"kind": "conv", "k": rng.choice([1, 3, 3, 3, 5])})
        pools = sum(layer["kind"] == "pool" for layer in layers)
        if 1 <= pools <= 2 and layers[-1]["kind"] == "conv" and layers[-1]["k"] > 1:
            return {"layers": layers}


def _render_q02(n: Numbers) -> str:
    return (f"A stack of layers, in this order (stride 1 for the convolutions; activations left out):\n"
            f"{_format_stack(n['layers'], with_padding=False)}\n"
            "What are the receptive field (in input pixels) and the jump after the last layer? Padding changes "
            "neither. Answer: rf_and_jump = (RF, JUMP), two whole numbers.")


def _check_q02(answer: object, n: Numbers) -> Marks:
    rf, jump = rf_and_jump(n["layers"])
    given_rf, given_jump = as_pair(answer, "(RF, JUMP)")
    return grade_parts(
        (lambda: as_whole(given_rf, "the RF") == rf,
         f"the RF {given_rf!r} is not right: each layer adds (kernel - 1) x the jump before it."),
        (lambda: as_whole(given_jump, "the jump") == jump,
         f"the jump {given_jump!r} is not right: only strided layers (here the max-pools) multiply it."),
    )


q02 = Exercise("q02", "receptive field and jump", "rf_and_jump", 2, _make_q02, _render_q02, _check_q02, [
    "Start at the input with RF 1 and jump 1, and update both layer by layer.",
    "A k x k layer adds (k - 1) x jump to the RF; a layer with stride s then multiplies the jump by s (a max-pool's "
    "kernel and stride both equal its size).",
    "Check your hand computation: build the stack with nn layers (padding of half the kernel keeps the map from "
    "shrinking away) and read the RF and jump columns of layer_table.",
])


def _make_ex02(rng: random.Random) -> Numbers:
    width, convs, before = rng.choice([6, 8, 10, 12]), rng.randint(4, 6), rng.randint(1, 2)
    full = 9 * width * width
    # Fewer than `budget`: exactly `convs` convs of the minimum width fit (with their biases too), one more never
    # does, even without biases; the slack is less than half a conv.
    budget = 10 * width + (convs - 1) * (full + width) + rng.randint(1, full // 2)
    return {"width": width, "budget": budget, "before_pool": before}


def best_rf_for_budget(n: Numbers) -> int:
    """Return the most receptive field exercise 02's numbers allow: as many bias-free convs of the minimum width
    as the budget fits, the pool after `before_pool` of them."""
    width, budget = n["width"], n["budget"]
    convs = 1
    while 9 * width + convs * 9 * width * width < budget:  # one more bias-free conv of the minimum width fits
        convs += 1
    return rf_and_jump([{"kind": "conv", "k": 3}] * n["before_pool"] + [{"kind": "pool"}]
                       + [{"kind": "conv", "k": 3}] * (convs - n["before_pool"]))[0]


def _render_ex02(n: Numbers) -> str:
    return (f"Build `block`: an nn.Sequential for 1x{SIDE}x{SIDE} images with the largest receptive field you can "
            f"reach with fewer than {n['budget']:,} parameters. Rules: plain 3x3 convolutions (stride 1, no "
            f"dilation, no groups), each with at least {n['width']} output channels; activations and BatchNorm2d as "
            f"you like; at most one nn.MaxPool2d(2), and only after the first {n['before_pool']} convolution(s). "
            "The check knows the largest RF these rules allow: 3 points for it, 2 for one step short, 1 for a valid "
            "block under the budget.")


def _check_ex02(answer: object, n: Numbers) -> Marks:
    block = as_module(answer, "block")
    table = table_of(block, (1, SIDE, SIDE))
    rules, convs_seen, pools = [], 0, 0
    for row, module in rows_with_modules(block, table):
        if " (call" in row.name:
            rules.append(f"layer {row.name.split(' (call')[0]} is used more than once: one module repeated shares its "
                         "weights, so its parameters count once while every call adds to the receptive field; give "
                         "each layer its own module (build a new nn.Conv2d each time).")
        if isinstance(module, nn.Conv2d):
            if module.kernel_size != (3, 3) or module.stride != (1, 1) or module.dilation != (1, 1) \
                    or module.groups != 1:
                rules.append(f"layer {row.name} is not a plain 3x3 convolution (kernel {module.kernel_size}, stride "
                             f"{module.stride}, dilation {module.dilation}, groups {module.groups}).")
            if module.out_channels < n["width"]:
                rules.append(f"layer {row.name} has {module.out_channels} output channels; each convolution needs "
                             f"at least {n['width']} (too few channels cannot detect enough kinds of edges).")
            convs_seen += 1
        elif isinstance(module, nn.MaxPool2d):
            pools += 1
            if module.kernel_size not in (2, (2, 2)) or module.stride not in (2, (2, 2)):
                rules.append(f"layer {row.name} is a max-pool other than nn.MaxPool2d(2).")
            if convs_seen < n["before_pool"]:
                rules.append(f"the max-pool comes after {convs_seen} convolution(s); the rules want it after at least "
                             f"{n['before_pool']}.")
        elif not isinstance(module, POINTWISE):
            rules.append(f"layer {row.name} ({row.kind}) is not allowed here: only 3x3 convolutions, activations, "
                         "BatchNorm2d, dropout and one nn.MaxPool2d(2).")
    if pools > 1:
        rules.append(f"it uses {pools} max-pools; the rules allow one.")
    if convs_seen == 0:
        rules.append("it has no convolution.")
    if rules:
        raise Explained(" ".join(dict.fromkeys(rules)))
    params = count_parameters(block)
    if params >= n["budget"]:
        raise Explained(parameter_problem(block, params, n["budget"]))
    best, rf = best_rf_for_budget(n), table.final_rf
    if rf > best:  # the rules cannot give more: something slipped past the checks above
        raise Explained(f"its receptive field is {rf}, more than the {best} these rules allow for your budget; "
                        "something in it breaks the rules (a shared or unusual layer?): rebuild it from plain layers.")
    if rf == best:
        return 3, []
    points = 2 if rf >= best - 4 else 1
    return points, [f"it is valid and under the budget, with RF {rf}; your budget allows RF {best} under these rules. "
                    "Where does the max-pool give the most, and how many convolutions does the budget pay for?"]


ex02 = Exercise("ex02", "the most receptive field for a budget", "block", 3, _make_ex02, _render_ex02, _check_ex02, [
    "A max-pool doubles what every later 3x3 conv adds to the RF: 2 pixels before it, 4 after it.",
    "A 3x3 conv from c_in to c_out costs 9 x c_in x c_out weights (+ c_out biases); channels beyond the minimum buy "
    "no receptive field.",
    "Count how many convolutions of the minimum width your budget pays for, and place the pool where the rules let "
    "it help the most convolutions.",
])


# --- notebook 03: what a 1x1 squeeze saves; a transition ------------------------------------------------------


def _make_q03(rng: random.Random) -> Numbers:
    return {"c_in": rng.choice([16, 24, 32, 40, 48, 64]), "c_out": rng.choice([8, 12, 16, 24, 32]),
            "squeeze": rng.choice([4, 6, 8, 12, 16, 20])}


def _saving(n: Numbers) -> int:
    a, b, s = n["c_in"], n["c_out"], n["squeeze"]
    return 9 * a * b - (a * s + 9 * s * b)


def _render_q03(n: Numbers) -> str:
    a, b, s = n["c_in"], n["c_out"], n["squeeze"]
    return (f"Design A: nn.Conv2d({a}, {b}, 3, bias=False).\n"
            f"Design B: nn.Conv2d({a}, {s}, 1, bias=False), then nn.Conv2d({s}, {b}, 3, bias=False).\n"
            "How many parameters does design B save compared with design A (a negative number if B costs more)? "
            "Answer: saving = a whole number.")


def _check_q03(answer: object, n: Numbers) -> Marks:
    given = as_whole(answer, "saving")
    if given == _saving(n):
        return 1, []
    if given == -_saving(n):
        return 0, ["the size is right but the sign is not: saving = parameters of A minus parameters of B."]
    return 0, [f"{given} is not the saving: count each design's weights (in x out x k x k per conv), then subtract."]


q03 = Exercise("q03", "which design is cheaper, and by how much", "saving", 1, _make_q03, _render_q03, _check_q03, [
    "Work on paper first: with bias=False a conv from c_in to c_out with a k x k kernel has c_in x c_out x k x k "
    "weights. Count design A that way.",
    "Design B has two layers: the 1x1 squeeze, then a 3x3 conv that starts from the squeezed channels. Count each "
    "by hand and add them.",
    "Saving = parameters of A minus parameters of B (negative when B costs more). Only once you have your number, "
    "check it: count_parameters on the two designs built with nn.",
])


def _make_ex03(rng: random.Random) -> Numbers:
    return {"c_in": rng.choice([16, 24, 40, 48, 64]), "c_out": rng.choice([4, 6, 10, 12]),
            "side": rng.choice(range(8, 28, 2))}


def _render_ex03(n: Numbers) -> str:
    a, b, side = n["c_in"], n["c_out"], n["side"]
    return (f"Build `transition`: it takes a {a}x{side}x{side} feature map and returns {b}x{side // 2}x{side // 2}: "
            f"it mixes the {a} channels into {b} at each position without looking at neighbours, and halves the "
            f"map with a 2x2 max-pool, with at most {a * b + b:,} parameters. 1 point for the output shape, 1 for "
            "mixing at each position (RF 2 after the pool) within the budget.")


def _check_ex03(answer: object, n: Numbers) -> Marks:
    a, b, side = n["c_in"], n["c_out"], n["side"]
    block = as_module(answer, "transition")
    out = output_on_zeros(block, (a, side, side))
    table = table_of(block, (a, side, side))
    shape_ok = tuple(out.shape[1:]) == (b, side // 2, side // 2)
    problems = [] if shape_ok else [f"it turns the {a}x{side}x{side} map into {'x'.join(map(str, out.shape[1:]))}; "
                                    f"it must give {b}x{side // 2}x{side // 2}."]
    last = table.rows[-1] if table.rows else None
    params = count_parameters(block)
    odd = [f"layer {row.name} ({row.kind})" for row, module in rows_with_modules(block, table)
           if not (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))
           and not (isinstance(module, nn.MaxPool2d) and module.kernel_size in (2, (2, 2)))
           and not isinstance(module, POINTWISE)]
    if odd:
        problems.append(f"{', '.join(odd)} is not part of a transition here: use 1x1 convolutions, activations or "
                        "batch norm, and one nn.MaxPool2d(2); the check can only vouch for those.")
    mixing_ok = last is not None and last.rf == 2 and last.jump == 2 and params <= a * b + b and not odd
    if last is not None and last.rf == 1 and last.jump == 2:
        problems.append("it halves the map by skipping pixels (RF 1, jump 2: a strided 1x1 conv reads one pixel in "
                        "four); pool 2x2 instead so every pixel counts.")
    elif last is not None and (last.rf, last.jump) != (2, 2):
        problems.append(f"its receptive field is {last.rf} with jump {last.jump}; mixing at each position and then a "
                        "2x2 max-pool gives RF 2, jump 2.")
    if params > a * b + b:
        problems.append(f"it has {params:,} parameters; at most {a * b + b:,} allowed (a 3x3 kernel costs nine times a "
                        "1x1).")
    return int(shape_ok) + int(mixing_ok), problems


ex03 = Exercise("ex03", "a 1x1 transition", "transition", 2, _make_ex03, _render_ex03, _check_ex03, [
    "Which kernel size mixes channels without looking at neighbours?",
    "Count by hand before you build: a 1x1 conv from c_in to c_out costs c_in x c_out weights (+ c_out for the "
    "bias); a 3x3 one costs nine times that. Which one fits your budget?",
    "Halve the side with a 2x2 max-pool; a stride-2 1x1 conv also halves it, but reads only one pixel in four. Work "
    "out the RF and jump after the pool by hand, then confirm them with layer_table.",
])


# --- notebook 04: a layer's parameter count; batch normalization ----------------------------------------------


def _make_q04(rng: random.Random) -> Numbers:
    return {"c_in": rng.choice([1, 8, 12, 16, 24, 32]), "c_out": rng.choice([8, 10, 12, 16, 20, 24, 32]),
            "k": rng.choice([1, 3, 5])}


def _render_q04(n: Numbers) -> str:
    return (f"How many parameters do nn.Conv2d({n['c_in']}, {n['c_out']}, {n['k']}) (with its default bias) and the "
            f"nn.BatchNorm2d({n['c_out']}) after it have together? Answer: layer_params = a whole number.")


def _check_q04(answer: object, n: Numbers) -> Marks:
    given = as_whole(answer, "layer_params")
    conv = n["k"] ** 2 * n["c_in"] * n["c_out"]
    expected = conv + 3 * n["c_out"]
    if given == expected:
        return 1, []
    if given == expected + 2 * n["c_out"]:
        return 0, ["BatchNorm2d's running mean and variance are buffers, not parameters: count only what it learns."]
    if given in (conv, conv + n["c_out"], conv + 2 * n["c_out"]):
        return 0, ["close: count the conv's weights, its biases, and what BatchNorm2d learns per channel."]
    return 0, [f"{given} is not the count: a conv has out x in x k x k weights and one bias per output channel."]


q04 = Exercise("q04", "a layer's parameter count", "layer_params", 1, _make_q04, _render_q04, _check_q04, [
    "By hand: a conv's weights are out x in x k x k, and its bias adds one per output channel.",
    "BatchNorm2d learns a scale and a shift per channel; its running mean and variance are buffers, not parameters.",
    "Add the two counts on paper. Then, as a check, build the two layers with your numbers and compare with "
    "count_parameters(nn.Sequential(...)).",
])


def _make_ex04(rng: random.Random) -> Numbers:
    w1 = rng.choice([6, 8, 10])
    w2 = rng.choice([w for w in (10, 12, 16, 20) if w >= w1])
    return {"widths": [w1, w2, rng.choice([w for w in (12, 16, 20, 24) if w >= w2])]}


def start_block(widths: list[int]) -> nn.Sequential:
    """Return the plain block exercise 04 starts from: three 3x3 convs of `widths` with ReLU, no normalization."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3), nn.ReLU()]
    return nn.Sequential(*layers)


def _render_ex04(n: Numbers) -> str:
    return (f"ex04.start() returns your starting block:\n{start_block(n['widths'])}\n"
            "Build `bn_block`: the same three convolutions (same shapes), each followed straight away by batch "
            "normalization (conv -> BatchNorm2d -> ReLU), and without any parameter the batch normalization makes "
            "redundant. 1 point for the normalization, 1 for an exact parameter count.")


class _StartsFromBlock(Exercise):
    """An exercise that hands the student a block to change: `start()` returns it."""

    def start(self) -> nn.Sequential:
        """Return a fresh copy of the starting block for the notebook's student key."""
        return start_block(self.given(student_key(caller_namespace()))["widths"])


def _check_ex04(answer: object, n: Numbers) -> Marks:
    block = as_module(answer, "bn_block")
    table = table_of(block, (1, SIDE, SIDE))
    rows = rows_with_modules(block, table)
    convs = [(i, m) for i, (_, m) in enumerate(rows) if isinstance(m, nn.Conv2d)]
    widths = n["widths"]
    wanted = [(c_out, c_in, 3, 3) for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True)]
    if [tuple(m.weight.shape) for _, m in convs] != wanted:
        raise Explained("keep the three convolutions of ex04.start() as they are: "
                         + ", ".join(f"{c_in}->{c_out} 3x3" for c_out, c_in, _, _ in wanted) + ".")
    problems = []
    for number, (i, conv) in enumerate(convs, start=1):
        after = rows[i + 1][1] if i + 1 < len(rows) else None
        if not isinstance(after, nn.BatchNorm2d):
            problems.append(f"conv {number} ({conv.in_channels}->{conv.out_channels}) is followed by "
                            f"{type(after).__name__ if after is not None else 'nothing'}, not BatchNorm2d: here "
                            "BatchNorm2d comes straight after each conv.")
        elif after.num_features != conv.out_channels or not after.affine:
            problems.append(f"the BatchNorm2d after conv {number} must be nn.BatchNorm2d({conv.out_channels}) with its "
                            "learned scale and shift.")
    if problems:
        return 0, problems
    params, expected = count_parameters(block), sum(9 * a * b + 2 * b for b, a, _, _ in wanted)
    if params == expected:
        return 2, []
    biased = [str(number) for number, (_, conv) in enumerate(convs, start=1) if conv.bias is not None]
    if params > expected and biased:
        return 1, [f"the normalization is right, but conv(s) {', '.join(biased)} keep a bias that BatchNorm2d cancels: "
                   "it subtracts each channel's mean, and a constant added to a whole channel moves that mean too."]
    return 1, [f"the normalization is right, but the block has {params:,} parameters where the three convs and their "
               "batch normalization need exactly what they learn; add nothing else."]


ex04 = _StartsFromBlock("ex04", "batch normalization, and what it makes redundant", "bn_block", 2, _make_ex04,
                        _render_ex04, _check_ex04, [
                    "Keep ex04.start()'s convs' shapes and put nn.BatchNorm2d(C) straight after each conv, C being "
                    "that conv's output channels.",
                    "BatchNorm2d subtracts each channel's mean over the batch. What happens to a constant added to "
                    "every value of a channel?",
                    "Which argument of nn.Conv2d adds one learned constant per output channel? Switch it off where it "
                    "is cancelled.",
                ])


# --- notebook 05: dropout's scale -------------------------------------------------------------------------------


def _make_q05(rng: random.Random) -> Numbers:
    return {"p": rng.choice([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])}


def _render_q05(n: Numbers) -> str:
    return (f"In training mode, nn.Dropout2d({n['p']}) zeroes whole channels at random. By what factor does it "
            "multiply the channels it keeps (to 2 decimals or better)? Answer: dropout_scale = a number.")


def _check_q05(answer: object, n: Numbers) -> Marks:
    given, expected = as_real(answer, "dropout_scale"), 1 / (1 - n["p"])
    if abs(given - expected) <= 0.006:
        return 1, []
    if abs(given - 1) < 1e-9:
        return 0, ["that is what eval mode does; in training the kept channels are scaled so that the expected "
                   "value stays the same."]
    return 0, [f"{given:g} is not the factor: the expected value of every channel must be the same with and without "
               "dropout."]


q05 = Exercise("q05", "what dropout does in training", "dropout_scale", 1, _make_q05, _render_q05, _check_q05, [
    "In training Dropout2d zeroes each channel with probability p; in eval mode it does nothing.",
    "The expected value of each channel must stay the same in training and in eval mode: if a share p of the "
    "channels becomes zero, by what factor must the others grow? Write it as an equation in p and solve it by hand.",
    "Once you have your factor, check it: nn.Dropout2d(p).train() on torch.ones(1, 1000, 1, 1), and look at the "
    "values that are not zero.",
])


# --- notebook 06: a global-average-pooling head ----------------------------------------------------------------


def _make_ex06(rng: random.Random) -> Numbers:
    return {"channels": rng.choice([10, 12, 16, 20, 24, 32]), "side": rng.choice([3, 4, 5, 6, 7])}


def _render_ex06(n: Numbers) -> str:
    c, side = n["channels"], n["side"]
    return (f"Build `head`: it takes the last feature maps of a network, {c} channels of {side}x{side}, and returns "
            f"10 log-probabilities per image, using global average pooling, with at most {10 * c + 10:,} "
            "parameters. 1 point for (batch, 10) log-probabilities, 1 for global average pooling within the budget.")


def _check_ex06(answer: object, n: Numbers) -> Marks:
    c, side = n["channels"], n["side"]
    head = as_module(answer, "head")
    out = output_on_zeros(head, (c, side, side))
    problems = [problem for problem in [log_probs_problem(out)] if problem]
    table = table_of(head, (c, side, side))
    pooled = [row for row in rows_before_flat(table) if row.kind in ("AvgPool2d", "AdaptiveAvgPool2d")
              and row.out_shape[-2:] == (1, 1)]
    if not pooled:
        problems.append(f"it has no global average pooling (an average pool that turns the {side}x{side} map into "
                        "1x1 before any Flatten or Linear).")
    params = count_parameters(head)
    if params > 10 * c + 10:
        problems.append(f"it has {params:,} parameters; at most {10 * c + 10:,} allowed.")
    return int(not log_probs_problem(out)) + int(bool(pooled) and params <= 10 * c + 10), problems


ex06 = Exercise("ex06", "a global-average-pooling head", "head", 2, _make_ex06, _render_ex06, _check_ex06, [
    "After global average pooling every channel is one number, whatever the map's side.",
    "What maps C numbers to 10 cheaply? Count by hand: a 1x1 conv or a Linear from C to 10 costs 10 x C (+ 10 "
    "biases). Does that fit your budget?",
    "End with log-probabilities of shape (batch, 10): flatten, then nn.LogSoftmax(dim=1). Afterwards, confirm your "
    "count with count_parameters and the shapes with layer_table.",
])


# --- notebook 07: the noise, augmentation, the schedule, a small model ---------------------------------------

_CHANGES = ["adding dropout 0.05", "batches of 64 instead of 128", "a 1x1 layer after the pool", "augmentation",
            "a one-cycle schedule", "24 channels instead of 16 before the pool"]


def _make_q07a(rng: random.Random) -> Numbers:
    while True:
        base = rng.uniform(98.9, 99.3)
        delta = rng.uniform(-0.05, 0.1) if rng.random() < 0.5 else rng.uniform(0.15, 0.35)
        a = [round(base + rng.uniform(-0.12, 0.12), 2) for _ in range(3)]
        b = [round(base + delta + rng.uniform(-0.12, 0.12), 2) for _ in range(3)]
        gap = max(min(b) - max(a), min(a) - max(b))  # > 0: the ranges do not overlap
        if abs(gap) >= 0.02 and len(set(a)) == 3 and len(set(b)) == 3 and max(a + b) < 99.9:
            return {"before": a, "after": b, "change": rng.choice(_CHANGES)}


def _render_q07a(n: Numbers) -> str:
    return (f"A design study (validation accuracy, mean of the last 3 epochs, 3 seeds) measured a design before and "
            f"after {n['change']}:\n  before: {', '.join(f'{x:.2f}' for x in n['before'])}\n"
            f"  after:  {', '.join(f'{x:.2f}' for x in n['after'])}\n"
            "(1) By how many points did the mean change (after minus before, 2 decimals)? (2) By the course's rule, "
            "is that larger than the seed-to-seed noise? Answer: noise_verdict = (DIFFERENCE, True or False).")


def _check_q07a(answer: object, n: Numbers) -> Marks:
    before, after = n["before"], n["after"]
    difference = statistics.mean(after) - statistics.mean(before)
    clear = min(after) > max(before) or max(after) < min(before)
    given_difference, given_clear = as_pair(answer, "(DIFFERENCE, True or False)")
    return grade_parts(
        (lambda: abs(as_real(given_difference, "the difference") - difference) <= 0.011,
         f"the difference {given_difference!r} is not right: the mean of the seeds after minus the mean before."),
        (lambda: as_yes_no(given_clear, "the verdict") == clear,
         "the verdict is not right: by the course's rule a difference counts only when every seed of one design beats "
         "every seed of the other."),
    )


q07a = Exercise("q07a", "a difference against the noise", "noise_verdict", 2, _make_q07a, _render_q07a, _check_q07a, [
    "The difference is the mean of the three seeds after, minus the mean of the three before.",
    "The course's rule (mnist_lesson.studies.compare): a difference counts only when every seed of one design beats "
    "every seed of the other.",
    "Compare the worst seed of one design with the best of the other: do the two ranges overlap?",
])

_KEEPS_LABEL = ["rotate by a random angle of up to 8 degrees", "shift by up to 2 pixels in x and in y",
                "scale by a random factor between 0.9 and 1.1", "add faint random noise to every pixel",
                "shear by up to 5 degrees", "blur very slightly (a 3x3 Gaussian, sigma 0.5)",
                "rotate by up to 5 degrees and shift by up to 10% of the side"]
_CHANGES_LABEL = ["flip left to right (a mirror image)", "flip top to bottom", "rotate by 180 degrees",
                  "rotate by 90 degrees", "shift by 60% of the side", "mirror on the diagonal (swap rows and columns)",
                  "black out the left half of the image"]


def _make_q07b(rng: random.Random) -> Numbers:
    keep = rng.randint(1, 3)
    options = rng.sample(_KEEPS_LABEL, keep) + rng.sample(_CHANGES_LABEL, 5 - keep)
    rng.shuffle(options)
    return {"options": dict(zip("abcde", options, strict=True))}


def _keeps(n: Numbers) -> set[str]:
    return {letter for letter, text in n["options"].items() if text in _KEEPS_LABEL}


def _render_q07b(n: Numbers) -> str:
    lines = "\n".join(f"  {letter}) {text}" for letter, text in n["options"].items())
    return ("Which of these training-image augmentations keep every digit's label (a person would still read each "
            f"digit 0-9 as the same digit)?\n{lines}\nAnswer: label_keeping = the set of letters, e.g. {{'a', 'c'}}.")


def _check_q07b(answer: object, n: Numbers) -> Marks:
    if isinstance(answer, str):
        answer = [c for c in answer if c.isalpha()]
    if not isinstance(answer, set | frozenset | list | tuple) or not all(isinstance(x, str) for x in answer):
        raise Explained(f"label_keeping should be a set of letters such as {{'a', 'c'}}, not {describe(answer)}.")
    given = {x.strip().lower() for x in answer}
    unknown = sorted(given - set(n["options"]))
    if unknown:
        raise Explained(f"{', '.join(unknown)} is not one of the options a to e.")
    if given == _keeps(n):
        return 1, []
    return 0, [f"not quite: {len(given - _keeps(n))} of your letters change some digit's label, and you left out "
               f"{len(_keeps(n) - given)} that keep every label."]


q07b = Exercise("q07b", "augmentations that keep the label", "label_keeping", 1, _make_q07b, _render_q07b,
                _check_q07b, [
    "Ask of each one: would a person still read every digit 0-9 as the same digit afterwards?",
    "Think of 6 and 9, of 2 and 5 in a mirror, and of a digit pushed half out of the frame.",
    "Small changes a hand makes when writing are safe; anything a hand never does is suspect.",
])


def _make_q07c(rng: random.Random) -> Numbers:
    while True:
        n = {"images": rng.choice([50_000, 55_000, 60_000, 48_000]), "batch": rng.choice([32, 64, 96, 100, 128, 200,
                                                                                           256]),
             "epochs": rng.randint(4, 20)}
        if n["images"] % n["batch"]:  # a last, smaller batch: the rounding matters
            return n


def _steps(n: Numbers) -> int:
    return n["epochs"] * math.ceil(n["images"] / n["batch"])


def _render_q07c(n: Numbers) -> str:
    return (f"A one-cycle run (torch's OneCycleLR as the course uses it: default pct_start, stepped after every "
            f"batch) trains for {n['epochs']} epochs on {n['images']:,} images in batches of {n['batch']} (each "
            "epoch's last, smaller batch is kept). (1) How many optimizer steps does the run take? (2) After about how "
            "many steps is the learning rate at its peak (within one step)? "
            "Answer: steps_and_peak = (STEPS, PEAK_STEP), two whole numbers.")


def _check_q07c(answer: object, n: Numbers) -> Marks:
    steps = _steps(n)
    given_steps, given_peak = as_pair(answer, "(STEPS, PEAK_STEP)")
    return grade_parts(
        (lambda: as_whole(given_steps, "the number of steps") == steps,
         f"{given_steps!r} is not the number of steps: one per batch, every epoch, counting the last smaller batch."),
        (lambda: abs(as_whole(given_peak, "the peak step") - 0.3 * steps) <= 1.5,  # counted from 0 or 1, rounded
         f"{given_peak!r} is not where the rate peaks: OneCycleLR warms up for a fixed share of all the steps "
         "(its pct_start)."),
    )


q07c = Exercise("q07c", "the one-cycle schedule in steps", "steps_and_peak", 2, _make_q07c, _render_q07c, _check_q07c, [
    "Steps per epoch = the number of batches: the images divided by the batch size, rounded up.",
    "The schedule is stepped once per batch, so the run has epochs x batches-per-epoch steps.",
    "Look up OneCycleLR's pct_start default: the share of all steps spent warming up to the peak.",
])


def _make_budgeted(budgets: list[int]) -> Callable[[random.Random], Numbers]:
    def make(rng: random.Random) -> Numbers:
        return {"budget": rng.choice(budgets)}

    return make


SMALL_ACCURACY = 20.0  # % after the smoke training: chance is 10%, a good small model lands near 25-35%


def _smoke_accuracy(model: nn.Module) -> float:
    """Train a re-initialized copy of `model` briefly (smoke mode, seed 0) and return its test accuracy in %."""
    # Imported here, not at the top: training pulls in the data pipeline, which only ex07's and ex08's checks need.
    from mnist_lesson.runs import TrainingStopped, train_recipe

    def trainable_copy() -> nn.Module:
        trial = copy.deepcopy(model)
        for m in trial.modules():
            if hasattr(m, "reset_parameters"):  # the same start for the same architecture: fair and repeatable
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # A plain average of the few batches seen: the default running average would still be mostly
                # its initial values after so few steps, and evaluation would measure that instead.
                m.reset_running_stats()
                m.momentum = None
        return trial

    try:
        _, history = train_recipe(trainable_copy, Recipe(epochs=1, lr=0.01, batch_size=128), device=pick_device(),
                                  seed=0, progress=False, smoke=True)
    except TrainingStopped as stop:
        raise Explained(f"its training stopped: {stop.reason}.") from None
    return history.epochs[-1]["test_acc"]


def advice(model: nn.Module) -> str:
    """Return advice for a model that does not learn, matched to what the model already has."""
    leaves = leaf_modules(model)
    if not any(isinstance(m, ACTIVATIONS) for m in leaves):
        return ("It has no activation (nn.ReLU) between its layers: without one, stacked convolutions are a single "
                "linear map.")
    rates = sorted({m.p for m in leaves if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0.25})
    if rates:
        return (f"Its dropout rate(s) {', '.join(f'{p:g}' for p in rates)} throw away most of what it learns in a "
                "short run; the course uses 0.05-0.1.")
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm) for m in leaves):
        return "Batch normalization after the convolutions helps a fresh network learn fast."
    narrow = sorted({m.out_channels for m in leaves if isinstance(m, nn.Conv2d) and m.out_channels < 4})
    if narrow:
        return (f"It already has batch normalization; but a layer of {narrow[0]} channel(s) is a bottleneck that "
                "little information passes through: widen it.")
    return ("It already has batch normalization and activations: look at the widths (a layer much narrower than its "
            "neighbours), and at the head (global average pooling, a 1x1 conv to 10, log_softmax).")


def _small_model(answer: object, n: Numbers, what: str, separable: bool, learn_points: int) -> Marks:
    model = as_module(answer, what)
    leaves = leaf_modules(model)
    convs = [m for m in leaves if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    if not convs:
        kinds = " -> ".join(type(m).__name__ for m in leaves[:6])
        raise Explained(f"your {what} ({kinds}) has no convolution with a kernel larger than 1x1, so it sees pixels, "
                         "not shapes; a logistic regression or an MLP learns MNIST too, but this exercise asks for a "
                         "convolutional network whose receptive field grows through convolutions and pooling.")
    if separable:
        pairs = [m for i, m in enumerate(leaves) if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
                 and m.kernel_size == (3, 3) and any(isinstance(x, nn.Conv2d) for x in leaves[i + 1:])
                 and next(x for x in leaves[i + 1:] if isinstance(x, nn.Conv2d)).kernel_size == (1, 1)]
        if len(pairs) < 2:
            raise Explained("it needs at least two depthwise-separable convolutions: a 3x3 conv with groups equal to "
                             "its input channels, followed by a 1x1 conv that mixes the channels.")
    problem = log_probs_problem(output_on_zeros(model, (1, SIDE, SIDE)))
    if problem:
        raise Explained(problem)
    table = table_of(model, (1, SIDE, SIDE))
    params, problems = count_parameters(model), []
    under = params < n["budget"]
    if not under:
        problems.append(parameter_problem(model, params, n["budget"]))
    covers = conv_rf(table) >= SIDE
    if not covers:
        problems.append(f"before any Flatten or Linear its receptive field reaches {conv_rf(table)} pixels; the "
                        f"convolutions and pooling must cover the {SIDE}x{SIDE} digit (a Linear layer that sees every "
                        "pixel does not count).")
    points = int(under) + int(covers)
    if under and covers:
        accuracy = _smoke_accuracy(model)
        if accuracy >= SMALL_ACCURACY:
            points += learn_points
        else:
            problems.append(f"after a short smoke-mode training it reaches {accuracy:.1f}% on the test batches; it "
                            f"must reach {SMALL_ACCURACY:.0f}% (chance is 10%), so it is not learning yet. "
                            f"{advice(model)}")
    return points, problems


def _render_small(n: Numbers, separable: bool) -> str:
    kind = ("a network that uses depthwise-separable convolutions (at least two: a 3x3 conv with groups equal to its "
            "input channels, then a 1x1 conv)") if separable else "a convolutional network"
    variable = "separable_model" if separable else "model"
    points = "1 point each for the budget and the RF, 1 for learning" if separable \
        else "1 point each for the budget and the RF, 2 for learning"
    return (f"Build `{variable}`: {kind} for 1x{SIDE}x{SIDE} images with fewer than {n['budget']:,} parameters, whose "
            f"receptive field covers the digit through convolutions and pooling (the layer table's rows before any "
            "Flatten or Linear), returning 10 log-probabilities, that learns: the check trains it briefly (smoke "
            f"mode) and needs {SMALL_ACCURACY:.0f}% test accuracy (chance is 10%). The course's own models are not "
            f"accepted. {points}.")


ex07 = Exercise("ex07", "a small model that learns", "model", 4, _make_budgeted([5_000, 5_500, 6_000, 6_500, 7_000]),
                lambda n: _render_small(n, separable=False),
                lambda answer, n: _small_model(answer, n, "model", separable=False, learn_points=2), [
                    "Notebook 06's layout, narrower: 3x3 convs with BatchNorm, one max-pool, global average pooling, "
                    "a 1x1 conv to 10 classes, log_softmax.",
                    "Read layer_table(model): the RF column must reach 28 before any Flatten or Linear; "
                    "count_parameters(model) must stay under your budget.",
                    "The heaviest layers are 3x3 convs between wide layers (9 x in x out): narrow the widest pair "
                    "first.",
                ])


# --- notebook 08: separable convolutions ----------------------------------------------------------------------


def _make_q08(rng: random.Random) -> Numbers:
    return {"c_in": rng.choice([8, 12, 16, 24, 32, 40]), "c_out": rng.choice([12, 16, 24, 32, 40, 48])}


def _render_q08(n: Numbers) -> str:
    a, b = n["c_in"], n["c_out"]
    return (f"From {a} to {b} channels: (1) how many parameters has a plain nn.Conv2d({a}, {b}, 3, bias=False)? "
            f"(2) How many has the depthwise-separable pair nn.Conv2d({a}, {a}, 3, groups={a}, bias=False) then "
            f"nn.Conv2d({a}, {b}, 1, bias=False)? Answer: plain_and_separable = (PLAIN, SEPARABLE).")


def _check_q08(answer: object, n: Numbers) -> Marks:
    a, b = n["c_in"], n["c_out"]
    plain, separable = as_pair(answer, "(PLAIN, SEPARABLE)")
    return grade_parts(
        (lambda: as_whole(plain, "the plain count") == 9 * a * b,
         f"{plain!r} is not the plain conv's count: every output channel has a 3x3 filter for every input channel."),
        (lambda: as_whole(separable, "the separable count") == 9 * a + a * b,
         f"{separable!r} is not the separable pair's count: one 3x3 filter per input channel, then the 1x1 mix."),
    )


q08 = Exercise("q08", "a separable block against a plain one", "plain_and_separable", 2, _make_q08, _render_q08,
               _check_q08, [
                   "By hand: in a plain 3x3 conv every output channel has its own 3x3 filter for every input "
                   "channel.",
                   "Separable: groups=c_in gives each input channel one 3x3 filter of its own; the 1x1 conv then "
                   "mixes the channels, one weight per pair of input and output channels.",
                   "Write both counts on paper first; then check them with count_parameters on the layers built "
                   "with nn.",
               ])

ex08 = Exercise("ex08", "a small separable model", "separable_model", 3,
                _make_budgeted([2_600, 2_800, 3_000, 3_200, 3_400]),
                lambda n: _render_small(n, separable=True),
                lambda answer, n: _small_model(answer, n, "separable_model", separable=True, learn_points=1), [
                    "A separable conv: nn.Conv2d(c, c, 3, groups=c, bias=False), then nn.Conv2d(c, c_out, 1, "
                    "bias=False), then ReLU and BatchNorm2d.",
                    "Keep the first conv plain (it sees one channel), pool once early, and end with global average "
                    "pooling and a 1x1 conv to 10.",
                    "In a separable block the 1x1 mix (c_in x c_out) costs the most: widen slowly, and read "
                    "layer_table for the RF.",
                ])

EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in (q01, q02, ex02, q03, q03b, ex03, q04, q04b, ex04, q05, q05b,
                                                         ex05, ex06, q07a, q07b, q07c, q07d, q07e, ex07, q08, ex08)}
