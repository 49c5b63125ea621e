"""The exercises that ask for judgement rather than a design: a convolution and a batch norm by hand, a model stuck
on one digit, training curves read against each other, the eval-mode bug measured, an ablation table read against
the noise, and the split a choice is made on (with the leak in a snippet that tunes on the test set).

Each is an `Exercise` (mnist_lesson.grading.exercise) with the student's own numbers; mnist_lesson.grading.exercises
lists them in EXERCISES with the others. Their hints put the work by hand first and a tool only as a check
afterwards. The grader execs this module's source into a fresh module (its private copy, COPIED_WITH in
exercises.py), so it imports the rest of the package by absolute name only.
"""

from __future__ import annotations

import copy
import random
import statistics
from typing import Any

import torch
from torch import nn

from mnist_lesson.grading.exercise import (
    Exercise,
    Explained,
    Marks,
    Numbers,
    as_real,
    as_whole,
    caller_namespace,
    describe,
    grade_parts,
    student_key,
)

LETTERS = "ABC"


def as_letter(value: object, what: str, options: str) -> str:
    """Return `value` as one of the letters in `options` (any case, spaces trimmed), or explain."""
    if isinstance(value, str) and value.strip().upper() in options and len(value.strip()) == 1:
        return value.strip().upper()
    raise Explained(f"{what} should be one of the letters {', '.join(repr(x) for x in options)}, not "
                    f"{describe(value)}.")


def as_parts(value: object, count: int, shape: str) -> tuple[object, ...]:
    """Return `value` as a tuple of `count` parts, or explain."""
    if isinstance(value, list | tuple) and len(value) == count:
        return tuple(value)
    raise Explained(f"the answer should be {shape} ({count} parts), not {describe(value)}.")


def as_grid(value: object, what: str, rows: int, cols: int) -> list[list[float]]:
    """Return `value` (nested lists, a tuple, a tensor or a numpy array holding rows x cols numbers, in row order)
    as rows of floats, or explain."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        try:
            value = torch.as_tensor(value).detach().cpu().reshape(-1).tolist()
        except (TypeError, ValueError, RuntimeError):
            raise Explained(f"{what} should hold {rows * cols} numbers, not {describe(value)}.") from None
    flat: list[object] = []

    def walk(item: object) -> None:
        if isinstance(item, list | tuple):
            for inner in item:
                walk(inner)
        else:
            flat.append(item)

    walk(value)
    if not isinstance(value, list | tuple) or len(flat) != rows * cols:
        raise Explained(f"{what} should be {rows} rows of {cols} numbers, such as [[1, 2], [3, 4]], not "
                        f"{describe(value)}.")
    numbers = [as_real(x, f"each value of {what}") for x in flat]
    return [numbers[r * cols:(r + 1) * cols] for r in range(rows)]


def _grid_text(grid: list[list[int]]) -> str:
    width = max(len(str(x)) for row in grid for x in row)
    return "\n".join("    " + " ".join(str(x).rjust(width) for x in row) for row in grid)


# --- notebook 03: a model stuck on one digit ---------------------------------------------------------------

# The digits of the validation split (the last 10,000 training images, mnist_lesson.loaders.split_validation),
# counted from its labels: tests/test_exercises.py counts them again from the data.
VALIDATION_COUNTS = (991, 1064, 990, 1030, 983, 915, 967, 1090, 1009, 961)
STUCK = {"val": 10.64, "train_eval": 11.27}  # notebook 03's transitions model after one epoch (design_runs.jsonl)


def _stuck_digit() -> int:
    return min(range(10), key=lambda d: abs(100 * VALIDATION_COUNTS[d] / sum(VALIDATION_COUNTS) - STUCK["val"]))


def _make_q03b(rng: random.Random) -> Numbers:
    return {"digit": rng.choice([d for d in range(10) if d != _stuck_digit()])}


def _render_q03b(n: Numbers) -> str:
    return (f"After its first epoch, notebook 03's transitions model (seed 0) scores {STUCK['val']:.2f}% on the "
            f"validation split (the last 10,000 training images) and {STUCK['train_eval']:.2f}% on the first "
            "10,000 training images: it gives the same digit for every image. (1) Which digit does it predict? "
            f"(2) A model that predicted {n['digit']} for every image instead: what accuracy would it score on the "
            "validation split, in % (2 decimals)? Work both out from the validation labels. "
            "Answer: stuck_digit = (DIGIT, ACCURACY).")


def _check_q03b(answer: object, n: Numbers) -> Marks:
    digit, accuracy = as_parts(answer, 2, "a pair (DIGIT, ACCURACY)")
    share = 100 * VALIDATION_COUNTS[n["digit"]] / sum(VALIDATION_COUNTS)
    return grade_parts(
        (lambda: as_whole(digit, "the digit") == _stuck_digit(),
         f"{digit!r} is not the digit it predicts: a model that always says d is right exactly on the images of d, "
         "so its accuracy is d's share of the split."),
        (lambda: abs(as_real(accuracy, "the accuracy") - share) <= 0.006 or abs(as_real(accuracy, "the accuracy")
                                                                                 - share / 100) <= 0.00006,
         f"{accuracy!r} is not that model's accuracy: count the validation images labelled {n['digit']} and divide "
         "by the size of the split (in %, 2 decimals)."),
    )


q03b = Exercise("q03b", "a model stuck on one digit", "stuck_digit", 2, _make_q03b, _render_q03b, _check_q03b, [
    "A model that gives the same digit d for every image is right on exactly the images labelled d. What is its "
    "accuracy, then, in terms of the labels?",
    "Count each digit's images in the validation split (the last 10,000 training labels): torch.bincount over the "
    "labels does the counting. Which digit's share matches the recorded score?",
    "Your accuracy is your digit's count divided by the split's size, times a hundred. Check it: build that "
    "constant prediction as a tensor and compare it with the labels.",
])


# --- notebook 04: a convolution and a batch norm by hand --------------------------------------------------------


def _make_q04b(rng: random.Random) -> Numbers:
    while True:
        image = [[rng.randint(0, 3) for _ in range(4)] for _ in range(4)]
        kernel = [[rng.choice([-1, 0, 0, 1, 1, 2]) for _ in range(3)] for _ in range(3)]
        n = {"image": image, "kernel": kernel, "bias": rng.randint(-2, 2), "mean": rng.randint(-2, 4),
             "std": rng.choice([1, 2, 3]), "scale": rng.choice([1, 2]), "shift": rng.randint(-3, 3)}
        n["var"], n["weight"] = n["std"] ** 2, n["scale"] * n["std"]
        out = conv_output(n)
        if len({x for row in out for x in row}) >= 3:  # no kernel that gives the same value everywhere
            return n


def conv_output(n: Numbers) -> list[list[int]]:
    """Return q04b's convolution output: the 3x3 kernel slid over the 4x4 image (no padding, stride 1), plus bias."""
    image, kernel = n["image"], n["kernel"]
    return [[sum(image[r + i][c + j] * kernel[i][j] for i in range(3) for j in range(3)) + n["bias"]
             for c in range(2)] for r in range(2)]


def bn_output(n: Numbers) -> list[list[int]]:
    """Return q04b's batch-norm output: eval mode, so the running mean and variance, then the weight and bias."""
    return [[n["weight"] * (x - n["mean"]) // n["std"] + n["shift"] for x in row] for row in conv_output(n)]


def _render_q04b(n: Numbers) -> str:
    return (f"A 1x1x4x4 image:\n{_grid_text(n['image'])}\ngoes through nn.Conv2d(1, 1, 3) whose kernel is\n"
            f"{_grid_text(n['kernel'])}\nand whose bias is {n['bias']} (no padding, stride 1), then through "
            f"nn.BatchNorm2d(1, eps=0) in eval mode with running_mean {n['mean']}, running_var {n['var']}, weight "
            f"{n['weight']} and bias {n['shift']}. (1) What is the 2x2 output of the convolution? (2) What is the 2x2 "
            "output of the batch norm? Both are whole numbers. Answer: conv_and_bn = (CONV, BN), each two rows of two "
            "numbers such as [[1, 2], [3, 4]].")


def _check_q04b(answer: object, n: Numbers) -> Marks:
    conv, bn = as_parts(answer, 2, "a pair (CONV, BN)")
    expected_conv, expected_bn = conv_output(n), bn_output(n)

    def same(given: list[list[float]], expected: list[list[int]]) -> bool:
        return all(abs(g - e) <= 1e-6 for gr, er in zip(given, expected, strict=True) for g, e in zip(gr, er,
                                                                                                       strict=True))

    def conv_problem() -> str:
        given = as_grid(conv, "CONV", 2, 2)
        flipped = [[sum(n["image"][r + i][c + j] * n["kernel"][2 - i][2 - j] for i in range(3) for j in range(3))
                    + n["bias"] for c in range(2)] for r in range(2)]
        if same(given, flipped) and flipped != expected_conv:
            return "CONV is the kernel flipped: nn.Conv2d multiplies without flipping (a cross-correlation)."
        if same(given, [[x - n["bias"] for x in row] for row in expected_conv]):
            return "CONV leaves out the bias: add it to every output value."
        return ("CONV is not right: each output value is the sum of the 3x3 window under the kernel times the kernel, "
                "value by value, plus the bias; the window moves one pixel at a time.")

    def bn_problem() -> str:
        given = as_grid(bn, "BN", 2, 2)
        try:
            from_yours = [[n["weight"] * (x - n["mean"]) / n["std"] + n["shift"] for x in row]
                          for row in as_grid(conv, "CONV", 2, 2)]
        except Explained:
            from_yours = None
        if from_yours is not None and same(given, from_yours):
            return "BN follows from your CONV, which is not right: fix CONV and BN follows."
        if same(given, [[n["weight"] * (x - n["mean"]) + n["shift"] for x in row] for row in expected_conv]):
            return "BN divides by nothing: divide by the square root of the running variance (eps is 0)."
        return ("BN is not right: in eval mode BatchNorm2d uses its running statistics, not the batch's: subtract the "
                "running mean, divide by the square root of the running variance (eps is 0), times the weight, plus "
                "the bias.")

    def check_bn() -> bool:
        return same(as_grid(bn, "BN", 2, 2), expected_bn)

    def check_conv() -> bool:
        return same(as_grid(conv, "CONV", 2, 2), expected_conv)

    points, problems = 0, []
    for test, problem in ((check_conv, conv_problem), (check_bn, bn_problem)):
        try:
            if test():
                points += 1
            else:
                problems.append(problem())
        except Explained as exc:
            problems.append(str(exc))
    return points, problems


q04b = Exercise("q04b", "a convolution and a batch norm by hand", "conv_and_bn", 2, _make_q04b, _render_q04b,
                _check_q04b, [
                    "Work on paper first. The convolution's top-left output: lay the kernel on the image's top-left "
                    "3x3 window, multiply value by value, add the nine products and the bias. Slide one pixel right, "
                    "then one down.",
                    "In eval mode BatchNorm2d does not look at the batch: (x - running_mean) / sqrt(running_var + eps) "
                    "x weight + bias, for each value.",
                    "Only then check: build the two layers, copy your numbers into conv.weight, conv.bias and the "
                    "batch norm's running_mean, running_var, weight and bias (under torch.no_grad()), call .eval() "
                    "and pass the image through.",
                ])


# --- notebook 05: training curves; the eval-mode bug ----------------------------------------------------------------

# Recorded design runs (key, seed, epochs shown), each read from design_runs.jsonl through mnist_lesson.records;
# tests/test_exercises.py checks that each fits its role by the rules the question states.
OVERFITTING = (("batchnorm", 2, 8), ("epochs15", 0, 7), ("epochs15", 2, 12), ("assignment-final-recipe", 2, 12),
               ("gap-final-recipe", 0, 12), ("under5k", 0, 13), ("under5k", 1, 10), ("under8k", 1, 8),
               ("gap-dropout05-final-recipe", 0, 9), ("final-no-dropout", 2, 7))
STILL_LEARNING = (("onecycle", 0, 8), ("onecycle", 2, 8), ("batch64", 2, 8), ("width24", 1, 8), ("under8k", 2, 15),
                  ("under5k", 1, 14), ("final", 2, 15), ("gap", 0, 8))
# Neither: stuck at the start (notebook 03's transitions model), or training and validation dipping together.
NEITHER = (("transitions", 2, 4), ("augment", 1, 7), ("under5k", 0, 8), ("final-no-dropout", 1, 9))


def recorded_curve(key: str, seed: int, epochs: int) -> dict[str, list[float]]:
    """Return the first `epochs` epochs of a recorded design run (the first one recorded with one thread): accuracy
    on the first 10,000 training images ("train") and on the validation split ("val"), in %."""
    from mnist_lesson.records import read_design_runs  # the evidence, read only here

    for run in read_design_runs():
        if run["key"] == key and run["seed"] == seed and run["threads"] == 1:
            shown = run["epochs"][:epochs]
            return {"train": [e["train_eval_acc"] for e in shown], "val": [e["val_acc"] for e in shown]}
    raise Explained(f"the recorded run {key!r} (seed {seed}) is missing from mnist_lesson/evidence/design_runs.jsonl; "
                    "ask your instructor.")


def overfits(curve: dict[str, list[float]]) -> bool:
    """The question's rule: training accuracy higher at the last shown epoch than three epochs before, and validation
    accuracy at the last shown epoch at least 0.05 below its best, reached earlier."""
    train, val = curve["train"], curve["val"]
    return len(val) >= 4 and train[-1] > train[-4] and max(val) - val[-1] >= 0.05


def still_learning(curve: dict[str, list[float]]) -> bool:
    """The question's rule: validation accuracy at the last shown epoch above every earlier epoch's."""
    val = curve["val"]
    return len(val) >= 2 and val[-1] > max(val[:-1])


def epochs_to_keep(curve: dict[str, list[float]]) -> list[int]:
    """Return the epochs (from 1) with the best validation accuracy: where a run that overfits should have stopped."""
    best = max(curve["val"])
    return [i for i, x in enumerate(curve["val"], start=1) if x == best]


def _make_q05b(rng: random.Random) -> Numbers:
    picked = [rng.choice(OVERFITTING), rng.choice(STILL_LEARNING), rng.choice(NEITHER)]
    rng.shuffle(picked)
    return {"runs": {letter: recorded_curve(*run) for letter, run in zip(LETTERS, picked, strict=True)}}


def _render_q05b(n: Numbers) -> str:
    lines = []
    for letter, curve in n["runs"].items():
        lines.append(f"  run {letter}  epoch: " + " ".join(f"{e:>6}" for e in range(1, len(curve['val']) + 1)))
        lines.append("          train: " + " ".join(f"{x:6.2f}" for x in curve["train"]))
        lines.append("            val: " + " ".join(f"{x:6.2f}" for x in curve["val"]))
    return ("Three recorded design runs (mnist_lesson/evidence/design_runs.jsonl: accuracy in % after each epoch on "
            "the first 10,000 training images and on the validation split):\n" + "\n".join(lines) + "\n"
            "Rules: a run overfits when its training accuracy at the last shown epoch is higher than three epochs "
            "before while its validation accuracy there is at least 0.05 below its best, reached earlier; a run is "
            "still learning when its last shown epoch has a validation accuracy above every earlier one. "
            "(1) Which run overfits? (2) Which run is still learning? (3) How many epochs of the overfitting run "
            "would you keep (stop at its best validation epoch)? Answer: curves = (LETTER, LETTER, EPOCHS).")


def _check_q05b(answer: object, n: Numbers) -> Marks:
    runs = n["runs"]
    over = next(letter for letter, c in runs.items() if overfits(c))
    learning = next(letter for letter, c in runs.items() if still_learning(c))
    given_over, given_learning, given_epochs = as_parts(answer, 3, "a triple (LETTER, LETTER, EPOCHS)")
    options = "".join(runs)
    return grade_parts(
        (lambda: as_letter(given_over, "the overfitting run", options) == over,
         f"run {given_over!r} does not overfit by the rule: compare each run's training accuracy at its last epoch "
         "with three epochs before, and its last validation accuracy with its best."),
        (lambda: as_letter(given_learning, "the run still learning", options) == learning,
         f"run {given_learning!r} is not still learning by the rule: is its last validation accuracy above every "
         "earlier one?"),
        (lambda: as_whole(given_epochs, "the epochs to keep") in epochs_to_keep(runs[over]),
         f"{given_epochs!r} epochs is not where the overfitting run's validation accuracy is best (count epochs from "
         "1)."),
    )


q05b = Exercise("q05b", "reading training curves", "curves", 3, _make_q05b, _render_q05b, _check_q05b, [
    "Read the table before computing anything: for each run, does the validation row still climb at the end, "
    "level off, or fall back while the training row keeps rising?",
    "Apply the rules run by run with a pencil: the last training figure against the one three epochs earlier; the "
    "last validation figure against the best validation figure of that run.",
    "The epochs to keep are counted from the first epoch up to the overfitting run's best validation figure. "
    "Afterwards you may check your reading with max() and .index() on q05b.numbers()'s lists.",
])


EVAL_IMAGES = 300  # validation images the eval-mode check measures on: a few seconds on a CPU, with the training
EVAL_STEPS = 150  # smoke batches of 64 the tiny model trains for: enough to be far above chance in eval mode

BUGGY_EVALUATE = '''\
def evaluate(model, images, labels):
    correct = 0
    with torch.no_grad():
        for image, label in zip(images, labels, strict=True):
            prediction = model(image[None]).argmax(dim=1)
            correct += int(prediction.item() == label)
    return 100 * correct / len(labels)'''

_trained: dict[tuple[int, float], nn.Module] = {}  # one training per student and process: the check and start()
_data: list[tuple[torch.Tensor, torch.Tensor]] = []  # the training split, read once per process


def _training_split() -> tuple[torch.Tensor, torch.Tensor]:
    if not _data:
        from mnist_lesson.loaders import load_split  # the data, only for this exercise

        _data.append(load_split(train=True))
    return _data[0]


def _tiny_model(p: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout2d(p),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _images(n: Numbers) -> tuple[torch.Tensor, torch.Tensor]:
    from mnist_lesson.loaders import normalize, to_unit_float

    images, labels = _training_split()
    start = len(images) - 10_000 + n["offset"]  # inside the validation split, never trained on
    return normalize(to_unit_float(images[start:start + EVAL_IMAGES])), labels[start:start + EVAL_IMAGES]


def trained_model(n: Numbers) -> nn.Module:
    """Return a fresh copy of ex05's tiny model, trained for a few batches with the student's seed (in train mode, as
    training leaves it)."""
    key = (n["seed"], n["p"])
    if key not in _trained:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny model: one thread is fast, and never fights a busy CPU
        try:
            _trained[key] = _train_tiny(n).float()
        finally:
            torch.set_num_threads(threads)
    return copy.deepcopy(_trained[key]).train()


def _train_tiny(n: Numbers) -> nn.Module:
    # In float64: the student's kernel and the grader's (other threads, another CPU) add in other orders, and in
    # float32 those last bits grow, step after step, into models several points apart; in float64 they do not.
    from mnist_lesson.loaders import normalize, to_unit_float

    images, labels = _training_split()
    generator = torch.Generator().manual_seed(n["seed"])
    with torch.random.fork_rng(devices=[]):  # the student's global random state stays as it was
        torch.manual_seed(n["seed"])
        model = _tiny_model(n["p"]).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        order = torch.randperm(len(images) - 10_000, generator=generator)[:64 * EVAL_STEPS]
        model.train()
        for batch in order.split(64):
            loss = nn.functional.cross_entropy(model(normalize(to_unit_float(images[batch])).double()), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def _measured(n: Numbers) -> tuple[float, float]:
    """Return ex05's accuracy (%) with the buggy snippet (train mode, torch seeded) and in eval mode."""
    namespace: dict[str, Any] = {"torch": torch}
    exec(BUGGY_EVALUATE, namespace)
    images, labels = _images(n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        before = namespace["evaluate"](trained_model(n), images, labels)
    return before, namespace["evaluate"](trained_model(n).eval(), images, labels)


class _EvalModeExercise(Exercise):
    """ex05: `start()` returns the trained model and the images the snippet evaluates."""

    def start(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """Return (model, images, labels) for the notebook's student key: the model as training left it."""
        n = self.given(student_key(caller_namespace()))
        return (trained_model(n), *_images(n))


def _make_ex05(rng: random.Random) -> Numbers:
    return {"seed": rng.randint(1, 10_000), "p": rng.choice([0.1, 0.15, 0.2]), "offset": rng.randrange(0, 9_700, 50)}


def _render_ex05(n: Numbers) -> str:
    return ("ex05.start() returns (model, images, labels): a small model with batch normalization and "
            f"Dropout2d({n['p']}), trained for {EVAL_STEPS} batches with seed {n['seed']}, and {EVAL_IMAGES} "
            f"validation images (from the split's image {n['offset']:,} on). Its "
            f"accuracy is measured with this function:\n{BUGGY_EVALUATE}\nIt has a bug that makes the model score "
            "near chance. (1) Write `evaluate_fixed(model, images, labels)`, the same function with the bug fixed "
            "(it returns the accuracy in %). (2) BEFORE: the accuracy the buggy function measures. (3) AFTER: the "
            "accuracy your fixed function measures. Measure each on a fresh ex05.start(): the buggy function changes "
            "the model it measures. Answer: eval_fix = (evaluate_fixed, BEFORE, AFTER).")


def _check_ex05(answer: object, n: Numbers) -> Marks:
    function, before, after = as_parts(answer, 3, "a triple (evaluate_fixed, BEFORE, AFTER)")
    measured_before, measured_after = _measured(n)

    def fixed() -> bool:
        if not callable(function):
            raise Explained(f"evaluate_fixed should be a function (def evaluate_fixed(model, images, labels): ...), "
                            f"not {describe(function)}.")
        images, labels = _images(n)
        model = trained_model(n)  # in train mode, as the buggy function received it
        try:
            result = function(model, images, labels)
        except Exception as exc:  # noqa: BLE001 (the student's function may fail in any way: explain)
            raise Explained(f"evaluate_fixed(model, images, labels) raised {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from None
        return abs(as_real(result, "what evaluate_fixed returns") - measured_after) <= 0.01

    return grade_parts(
        (fixed, "evaluate_fixed does not measure the model as it will be used: after training, batch normalization "
                "must use its running statistics and dropout must keep every channel."),
        (lambda: abs(as_real(before, "BEFORE") - measured_before) <= 8,
         f"BEFORE {before!r} is not what the buggy function measures (the check measured {measured_before:.1f}%; "
         "dropout makes it move by a few points from run to run)."),
        (lambda: abs(as_real(after, "AFTER") - measured_after) <= 2,
         f"AFTER {after!r} is not what the fixed function measures on a fresh ex05.start()'s model and images (the "
         "buggy function, run first on the same copy, changes it)."),
    )


ex05 = _EvalModeExercise("ex05", "the eval-mode bug", "eval_fix", 3, _make_ex05, _render_ex05, _check_ex05, [
    "Read the function line by line and ask which mode the model is in when it runs: who last called "
    "model.train() or model.eval()?",
    "In train mode batch normalization normalizes each batch (here: one image) by its own statistics, and dropout "
    "zeroes channels at random; which of the two would make an answer change when you run it twice?",
    "Fix it by hand first, then measure both versions on ex05.start()'s model and images; the fixed one should be "
    "far above chance, the buggy one near it.",
])


# --- notebook 07: an ablation table against the noise; the split for a choice, and a leak ----------------------

_ABLATIONS = ["adding dropout 0.05", "batches of 64", "a 1x1 layer after the pool", "augmentation",
              "a one-cycle schedule", "24 channels before the pool", "weight decay 5e-4", "15 epochs instead of 8",
              "an EMA of the weights", "a wider head"]


def _seeds(rng: random.Random, centre: float) -> list[float]:
    return [round(centre + rng.uniform(-0.12, 0.12), 2) for _ in range(3)]


def ablation_verdicts(n: Numbers) -> dict[str, bool]:
    """Return, per change of q07d, whether it is larger than the noise by the rule of studies.noise_verdict (every
    seed of one design beats every seed of the other)."""
    base = n["baseline"]
    return {letter: min(row["seeds"]) > max(base) or max(row["seeds"]) < min(base)
            for letter, row in n["changes"].items()}


def ablation_keep(n: Numbers) -> str:
    """Return the change of q07d to keep: the real improvement with the highest mean."""
    real = [letter for letter, clear in ablation_verdicts(n).items()
            if clear and statistics.mean(n["changes"][letter]["seeds"]) > statistics.mean(n["baseline"])]
    return max(real, key=lambda letter: statistics.mean(n["changes"][letter]["seeds"]))


def _make_q07d(rng: random.Random) -> Numbers:
    while True:
        centre = rng.uniform(98.9, 99.2)
        names = rng.sample(_ABLATIONS, 4)
        changes = {}
        for letter, name in zip("abcd", names, strict=True):
            delta = rng.choice([rng.uniform(-0.08, 0.08), rng.uniform(0.12, 0.35), rng.uniform(-0.3, -0.15)])
            changes[letter] = {"change": name, "seeds": _seeds(rng, centre + delta)}
        n = {"baseline": _seeds(rng, centre), "changes": changes}
        seeds = [x for row in changes.values() for x in row["seeds"]] + n["baseline"]
        gaps = [max(min(row["seeds"]) - max(n["baseline"]), min(n["baseline"]) - max(row["seeds"]))
                for row in changes.values()]
        verdicts = ablation_verdicts(n)
        improvements = [statistics.mean(changes[x]["seeds"]) for x, clear in verdicts.items()
                        if clear and statistics.mean(changes[x]["seeds"]) > statistics.mean(n["baseline"])]
        if (all(abs(gap) >= 0.02 for gap in gaps) and 1 <= sum(verdicts.values()) <= 3 and improvements
                and len(set(improvements)) == len(improvements) and max(seeds) < 99.9):
            return n


def _render_q07d(n: Numbers) -> str:
    rows = [f"  baseline:  {', '.join(f'{x:.2f}' for x in n['baseline'])}"]
    rows += [f"  {letter}) {row['change']}: {', '.join(f'{x:.2f}' for x in row['seeds'])}"
             for letter, row in n["changes"].items()]
    return ("An ablation study (validation accuracy in %, mean of the last 3 epochs, 3 seeds each), every change "
            "made to the same baseline:\n" + "\n".join(rows) + "\n(1) By the course's rule (studies.compare), which "
            "changes make a difference larger than the seed-to-seed noise, better or worse? (2) Which one change "
            "would you keep? Answer: ablation = (SET OF LETTERS, LETTER), e.g. ({'a', 'c'}, 'c').")


def _letters(value: object, options: str) -> set[str]:
    if isinstance(value, str):
        value = [c for c in value if c.isalpha()]
    if not isinstance(value, set | frozenset | list | tuple) or not all(isinstance(x, str) for x in value):
        raise Explained(f"the changes should be a set of letters such as {{'a', 'c'}}, not {describe(value)}.")
    given = {x.strip().lower() for x in value}
    unknown = sorted(given - set(options))
    if unknown:
        raise Explained(f"{', '.join(unknown)} is not one of the changes {', '.join(options)}.")
    return given


def _check_q07d(answer: object, n: Numbers) -> Marks:
    real = {letter for letter, clear in ablation_verdicts(n).items() if clear}
    given_real, given_keep = as_parts(answer, 2, "a pair (SET OF LETTERS, LETTER)")
    options = "".join(n["changes"])
    return grade_parts(
        (lambda: _letters(given_real, options) == real,
         "the set of real changes is not right: a change counts only when all three of its seeds are above all "
         "three of the baseline's, or all below."),
        (lambda: as_letter(given_keep, "the change to keep", options.upper()).lower() == ablation_keep(n),
         f"{given_keep!r} is not the change to keep: among the changes larger than the noise, keep the one that "
         "helps the most on average."),
    )


q07d = Exercise("q07d", "an ablation table against the noise", "ablation", 2, _make_q07d, _render_q07d, _check_q07d, [
    "For each change, write down its worst and best seed next to the baseline's worst and best.",
    "The rule of studies.compare: a change counts when its range and the baseline's do not overlap at all, in "
    "either direction; a change that is clearly worse is real too, but not one to keep.",
    "Of the real changes that are above the baseline, keep the one with the highest mean. Check your reading "
    "afterwards with min() and max() on q07d.numbers().",
])

# Choices and the split each is made on: the weights learn on train, design choices are made on validation, and
# the test set is read once, at the end, to report.
_CHOICES = [("fit the weights of the network", "train"),
            ("let the optimizer update the network's weights, batch after batch", "train"),
            ("choose the dropout rate", "validation"),
            ("choose how many epochs to train", "validation"),
            ("decide whether augmentation helps", "validation"),
            ("pick the width of the first block", "validation"),
            ("state, once, the accuracy the finished model reaches on unseen digits in the README", "test"),
            ("tell a reader, once at the very end, how well the chosen model does on digits it never saw", "test")]
SPLITS = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
          "valid": "validation", "test": "test"}

_KNOBS = [("width", "(8, 12, 16)", "build_model(width=value)"), ("dropout", "(0.0, 0.05, 0.1)",
                                                                    "build_model(dropout=value)"),
          ("lr", "(0.01, 0.03, 0.1)", "build_model()"), ("epochs", "(6, 8, 10)", "build_model()")]


def _make_q07e(rng: random.Random) -> Numbers:
    knob, values, build = rng.choice(_KNOBS)
    fit = {"lr": "fit(model, train_loader, lr=value, epochs=8)",
           "epochs": "fit(model, train_loader, lr=0.01, epochs=value)"}.get(knob, "fit(model, train_loader, "
                                                                                   "lr=0.01, epochs=8)")
    lines = ["torch.manual_seed(0)", "train_loader, val_loader, test_loader = loaders(batch_size=128, validation=True)"]
    if rng.random() < 0.5:
        lines.reverse()
    if rng.random() < 0.5:
        lines.insert(0, f"# tune the {knob}, then report the finished model")
    lines += ["scores = {}", f"for value in {values}:  # the {knob}", f"    model = {build}", f"    {fit}"]
    if rng.random() < 0.5:  # the test set scores each candidate
        lines.append("    scores[value] = accuracy(model, test_loader)")
        if rng.random() < 0.5:
            lines.append("print('scores:', scores)")
        lines.append("best = max(scores, key=scores.get)")
    else:  # validation scores each candidate, then the test set picks among them
        lines.append("    scores[value] = accuracy(model, val_loader)")
        if rng.random() < 0.5:
            lines.append("print('validation:', scores)")
        lines.append("best = max(scores, key=lambda v: accuracy(retrain(v), test_loader))")
    lines += [f"final = {build.replace('value', 'best')}", fit.replace("model", "final").replace("value", "best"),
              "print('test accuracy:', accuracy(final, test_loader))"]
    split = rng.choice(["train", "validation", "test"])  # each split as likely: guessing one does not pay
    choice = rng.choice([text for text, where in _CHOICES if where == split])
    return {"choice": choice, "lines": lines}


def leak_line(n: Numbers) -> int:
    """Return the line (from 1) of q07e's snippet where the test set takes part in a choice."""
    return next(i for i, line in enumerate(n["lines"], start=1) if "test_loader)" in line
                and not line.startswith("print("))


def _render_q07e(n: Numbers) -> str:
    code = "\n".join(f"  {i:>2} | {line}" for i, line in enumerate(n["lines"], start=1))
    return (f"(1) On which split (train, validation or test) should you {n['choice']}? (2) This snippet tunes a "
            f"design choice and reports the result:\n{code}\nOn which line does the test set take part in a "
            "choice (a leak: the test accuracy it reports is then no longer unseen)? "
            "Answer: split_and_leak = (SPLIT, LINE).")


def _check_q07e(answer: object, n: Numbers) -> Marks:
    split = dict(_CHOICES)[n["choice"]]
    given_split, given_line = as_parts(answer, 2, "a pair (SPLIT, LINE)")

    def split_ok() -> bool:
        if not isinstance(given_split, str) or given_split.strip().lower() not in SPLITS:
            raise Explained(f"the split should be 'train', 'validation' or 'test', not {describe(given_split)}.")
        return SPLITS[given_split.strip().lower()] == split

    return grade_parts(
        (split_ok, f"{given_split!r} is not the split to {n['choice']} on: the weights learn on train, every "
                   "design choice is made on validation, and test is read once, at the end, to report."),
        (lambda: as_whole(given_line, "the line") == leak_line(n),
         f"line {given_line!r} is not the leak: find where a test accuracy decides something (a score that is "
         "compared, a max over candidates); reporting it once at the very end is not a leak."),
    )


q07e = Exercise("q07e", "the split for a choice, and a leak", "split_and_leak", 2, _make_q07e, _render_q07e,
                _check_q07e, [
                    "Three splits, three jobs: one to learn the weights, one to make choices on, one to read once at "
                    "the very end. Which job is yours?",
                    "In the snippet, follow every use of test_loader and ask: does its result feed a max, a "
                    "comparison, or a later line, or is it only printed at the end?",
                    "A leak is a line whose test-set figure changes what the code does next. Count lines from the top "
                    "as the listing numbers them.",
                ])


JUDGEMENT: tuple[Exercise, ...] = (q03b, q04b, q05b, ex05, q07d, q07e)
