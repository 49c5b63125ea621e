"""Every helper that takes a model runs on the model's device, and the GPU's levers are chosen right, without a GPU.

A second device is simulated on the CPU (`Elsewhere`, a torch function mode). Tensors placed there report the
`meta` device but keep real numbers, so every helper's results can be compared with a plain CPU run. As across a
real device boundary, an operation that mixes them with CPU tensors raises (a 0-dim CPU tensor excepted, as CUDA
allows), `.numpy()` refuses them, `.cpu()` copies them back, and factories called with `device=ELSEWHERE` make
them. A model placed there gets a forward pre-hook that refuses an input from another device than its own: the
crash of notebook 02 on a GPU (issue 22), reproduced on a CPU.

The CUDA identities (a T4, capability 7.5; an H100, 9.0) are mocked: device choice, bfloat16, the evaluation
batch, cuDNN autotuning, the grader's threads, and pinned, non-blocking copies on the DataLoader path.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import itertools
import pkgutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

import mnist_lesson
from mnist_lesson import budget, inside, runs
from mnist_lesson.config import GPU_EVAL_BATCH, Recipe, Speed, UsageError
from mnist_lesson.dataflow import trace_forward
from mnist_lesson.device import (
    Autocast,
    default_threads,
    describe_device,
    eval_batch_for,
    model_device,
    native_bf16,
    pick_device,
    runnable,
    use_amp,
)
from mnist_lesson.explore import summary_lines
from mnist_lesson.grading import exercise, exercises, grader
from mnist_lesson.grading.exercise import student_key
from mnist_lesson.grading.exercises import EXERCISES
from mnist_lesson.graphed import fit_graphed
from mnist_lesson.loaders import DeviceBatches, InMemoryLoader, dataloaders, load_split
from mnist_lesson.models import get_model
from mnist_lesson.plots import plot_params
from mnist_lesson.receptive_field import layer_table
from mnist_lesson.recipes import WeightAverage, get_recipe, make_optimizer
from mnist_lesson.train import History, evaluate, fit, predict

matplotlib.use("Agg")

ELSEWHERE = torch.device("meta")  # what a placed tensor reports; its numbers stay in CPU memory
CPU = torch.device("cpu")
CROSSING = {"copy_", "_has_compatible_shallow_copy_type"}  # a copy may cross devices; the other is only a question


class WrongDevice(RuntimeError):
    """A module got an input from another device than its own (a RuntimeError, as CUDA's own error is)."""


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def refuse_other_devices(name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A forward pre-hook: raise WrongDevice unless every tensor input is where the module's own tensors are."""
    home = model_device(module)
    for t in _tensors((args, kwargs)):
        if t.device != home:
            raise WrongDevice(f"{name} ({type(module).__name__}) on {home} got an input on {t.device}")


def guard(model: nn.Module) -> nn.Module:
    """Hook `refuse_other_devices` on the model and on every module of it that holds tensors; return the model."""
    for name, module in model.named_modules():
        if not name or next(itertools.chain(module.parameters(), module.buffers()), None) is not None:
            module.register_forward_pre_hook(partial(refuse_other_devices, name or "the model"), with_kwargs=True)
    return model


class Elsewhere(TorchFunctionMode):
    """A second device simulated on the CPU: see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.held = WeakTensorKeyDictionary()
        self.moves: list[bool] = []  # non_blocking of every `.to` that brought a tensor here
        self.saving = False  # while torch.save runs, which would write no data for a `meta` tensor

    def holds(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and value in self.held

    def put(self, value: Any) -> Any:
        """Mark every tensor in `value` as being here; return `value`."""
        for t in _tensors(value):
            self.held[t] = True
        return value

    def place(self, model: nn.Module) -> nn.Module:
        """Put `model`'s parameters and buffers here and guard its inputs (`guard`); return it."""
        self.put([*model.parameters(), *model.buffers()])
        return guard(model)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if name in ("__get__", "__set__") and hasattr(owner, "__objclass__"):  # a tensor attribute
            return self.attribute(owner.__name__, name, func, args)
        if name == "to":
            return self.to(func, args, kwargs)
        if name == "cpu":
            out = func(*args, **kwargs)
            return out.clone() if self.holds(args[0]) and out is args[0] else out
        if name in ("numpy", "__array__") and self.holds(args[0]):
            raise TypeError("can't convert meta device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                            "host memory first.")
        if kwargs.get("device") is not None and torch.device(kwargs["device"]) == ELSEWHERE:
            return self.put(func(*args, **{**kwargs, "device": CPU}))
        tensors = list(_tensors((args, kwargs)))
        if name in CROSSING or not any(self.holds(t) for t in tensors):
            return func(*args, **kwargs)
        if any(not self.holds(t) and t.dim() > 0 for t in tensors):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{ELSEWHERE} and cpu! (in {name})")
        return self.put(func(*args, **kwargs))

    def attribute(self, attr: str, access: str, func: Any, args: tuple[Any, ...]) -> Any:
        base = args[0]
        value = func(*args)
        if access == "__set__":
            if attr == "data":  # Module.to swaps a parameter's data: the parameter is where its new data is
                if self.holds(args[1]):
                    self.put(base)
                else:
                    self.held.pop(base, None)
            return value
        if attr == "device":
            return ELSEWHERE if self.holds(base) and not self.saving else value
        if isinstance(value, torch.Tensor) and self.holds(base):  # .grad, .data, .T, ...
            self.put(value)
        return value

    def to(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        source, rest = args[0], args[1:]
        other = next((a for a in rest if isinstance(a, torch.Tensor)), kwargs.get("other"))
        if other is not None:
            target, non_blocking = (ELSEWHERE if self.holds(other) else other.device), kwargs.get("non_blocking", False)
        else:
            target, _, non_blocking, _ = torch._C._nn._parse_to(*rest, **kwargs)
        plain = [CPU if isinstance(a, (str, torch.device)) else a for a in args]
        out = func(*plain, **{k: (CPU if k == "device" else v) for k, v in kwargs.items()})
        here = self.holds(source) if target is None else torch.device(target) == ELSEWHERE
        if here != self.holds(source):  # a move: a copy, as between two devices
            out = out.clone() if out is source else out
            if here:
                self.moves.append(bool(non_blocking))
        return self.put(out) if here else out


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[Elsewhere]:
    """The simulated device, active for the test; a deep copy of a parameter stays where the parameter is, and
    torch.save sees the true device (it writes no data for a `meta` tensor)."""
    mode = Elsewhere()
    deepcopy, save = nn.Parameter.__deepcopy__, torch.save

    def keep_device(param: nn.Parameter, memo: dict[int, Any]) -> nn.Parameter:
        out = deepcopy(param, memo)
        return mode.put(out) if mode.holds(param) else out

    def save_data(*args: Any, **kwargs: Any) -> None:
        mode.saving = True
        try:
            save(*args, **kwargs)
        finally:
            mode.saving = False

    monkeypatch.setattr(nn.Parameter, "__deepcopy__", keep_device)
    monkeypatch.setattr(torch, "save", save_data)
    with mode:
        yield mode


def pair(build: Callable[[], nn.Module], mode: Elsewhere) -> tuple[nn.Module, nn.Module]:
    """Return (a model on the CPU, the same weights placed on the simulated device)."""
    torch.manual_seed(0)
    model = build()
    return model, mode.place(copy.deepcopy(model))


def digits(n: int) -> torch.Tensor:
    """Return `n` real test digits as float [n, 1, 28, 28] in [0, 1], on the CPU."""
    images, _ = load_split(False)
    return (images[:n].float() / 255).unsqueeze(1)


# --- the simulation itself ---------------------------------------------------------------------------------


def test_the_simulated_device_refuses_what_a_gpu_refuses(elsewhere: Elsewhere) -> None:
    model = elsewhere.place(nn.Conv2d(1, 2, 3))
    assert model_device(model) == ELSEWHERE
    with pytest.raises(WrongDevice, match="on meta got an input on cpu"):
        model(torch.zeros(1, 1, 5, 5))
    x = torch.zeros(1, 1, 5, 5, device=ELSEWHERE)
    assert model(x).device == ELSEWHERE and model(x).cpu().device == CPU
    with pytest.raises(RuntimeError, match="same device"):
        model(x) + torch.ones(2, 3, 3)
    assert (model(x) * torch.tensor(2.0)).device == ELSEWHERE  # a 0-dim CPU tensor mixes, as on CUDA
    with pytest.raises(TypeError, match="numpy"):
        model(x).detach().numpy()
    moved = torch.ones(3).to(ELSEWHERE, non_blocking=True)
    assert moved.device == ELSEWHERE and elsewhere.moves == [True] and moved.cpu().tolist() == [1.0, 1.0, 1.0]
    model.to(CPU)
    assert model_device(model) == CPU and model(torch.zeros(1, 1, 5, 5)).device == CPU


def test_model_device_reads_parameters_then_buffers_else_the_cpu() -> None:
    assert model_device(nn.Linear(2, 2).to("meta")) == ELSEWHERE
    assert model_device(nn.BatchNorm2d(2, affine=False).to("meta")) == ELSEWHERE
    assert model_device(nn.ReLU()) == CPU


def test_forward_only_helpers_run_on_a_real_meta_model() -> None:
    """The issue's own reproduction: a model on `meta` whose modules refuse inputs from another device."""
    model = guard(get_model("skeleton").to("meta"))
    with pytest.raises(WrongDevice):
        model(torch.zeros(1, 1, 28, 28))
    assert layer_table(model).to_text() == layer_table(get_model("skeleton")).to_text()
    assert inside.rf_boxes(model) == inside.rf_boxes(get_model("skeleton"))
    assert exercise.table_of(model, (1, 28, 28)).final_rf == layer_table(model).final_rf


# --- every public helper that takes a model -----------------------------------------------------------------

# Each public function (or method) of the package with a parameter `model: nn.Module`, and the test below that
# runs it on the simulated device. A new one fails test_every_helper_that_takes_a_model_is_covered until listed.
TABLES = "test_counts_and_tables_read_a_model_where_it_is"
INSIDE = "test_the_look_inside_helpers_run_on_the_models_device"
LOOP = "test_the_loop_and_its_pieces_run_on_the_models_device"
READERS = "test_the_exercise_readers_probe_where_the_model_is"
COVERED = {
    "mnist_lesson.device.model_device": "test_model_device_reads_parameters_then_buffers_else_the_cpu",
    "mnist_lesson.budget.count_parameters": TABLES,
    "mnist_lesson.budget.block_params": TABLES,
    "mnist_lesson.budget.parameter_report": TABLES,
    "mnist_lesson.budget.check_budget": TABLES,
    "mnist_lesson.budget.params_by_kind": TABLES,
    "mnist_lesson.dataflow.trace_forward": TABLES,
    "mnist_lesson.receptive_field.layer_table": TABLES,
    "mnist_lesson.explore.summary_lines": TABLES,
    "mnist_lesson.plots.plot_params": TABLES,
    "mnist_lesson.inside.blocks": TABLES,
    "mnist_lesson.inside.rf_boxes": INSIDE,
    "mnist_lesson.inside.effective_receptive_field": INSIDE,
    "mnist_lesson.inside.plot_rf_on_digit": INSIDE,
    "mnist_lesson.inside.block_outputs": INSIDE,
    "mnist_lesson.inside.plot_feature_maps": INSIDE,
    "mnist_lesson.inside.ActivationStats.attach": LOOP,
    "mnist_lesson.inside.start_figures": "test_how_a_network_starts_is_measured_where_it_is",
    "mnist_lesson.inside.prediction_shares": "test_how_a_network_starts_is_measured_where_it_is",
    "mnist_lesson.train.fit": LOOP,
    "mnist_lesson.graphed.fit_graphed": "test_the_graphed_loop_runs_its_step_where_the_model_is",
    "mnist_lesson.graphed.GraphedStep.__init__": "test_the_graphed_loop_runs_its_step_where_the_model_is",
    "mnist_lesson.train.evaluate": LOOP,
    "mnist_lesson.train.predict": LOOP,
    "mnist_lesson.recipes.make_optimizer": LOOP,
    "mnist_lesson.device.Autocast.__init__": LOOP,
    "mnist_lesson.device.runnable": LOOP,
    "mnist_lesson.runs.save_checkpoint": LOOP,
    "mnist_lesson.runs.load_checkpoint": LOOP,
    "mnist_lesson.recipes.WeightAverage.__init__": "test_the_weight_average_follows_the_model_where_it_is",
    "mnist_lesson.runs.train_recipe": "test_train_recipe_runs_where_it_is_told",
    "mnist_lesson.runs.TrainingStopped.__init__": "(holds the model it is given; computes nothing)",
    "mnist_lesson.grading.exercise.leaf_modules": READERS,
    "mnist_lesson.grading.exercise.output_on_zeros": READERS,
    "mnist_lesson.grading.exercise.table_of": READERS,
    "mnist_lesson.grading.exercise.rows_with_modules": READERS,
    "mnist_lesson.grading.exercise.parameter_problem": READERS,
    "mnist_lesson.grading.exercises.advice": READERS,
}


def public_model_helpers() -> set[str]:
    """Return every public function and method of the package with a parameter `model` annotated as a module."""
    found = set()
    for info in pkgutil.walk_packages(mnist_lesson.__path__, "mnist_lesson."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            members = [(name, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                members = [(f"{name}.{attr}", member) for attr, member in vars(obj).items()
                           if inspect.isfunction(member) and (attr == "__init__" or not attr.startswith("_"))]
            for qualname, function in members:
                parameter = inspect.signature(function).parameters.get("model")
                if parameter is not None and "Module" in str(parameter.annotation):
                    found.add(f"{module.__name__}.{qualname}")
    return found


def test_every_helper_that_takes_a_model_is_covered() -> None:
    missing = public_model_helpers() - set(COVERED)
    assert not missing, f"run these on the simulated device here and list them in COVERED: {sorted(missing)}"
    tests = {name for name in globals() if name.startswith("test_")}
    assert {how for how in COVERED.values() if how.startswith("test_")} <= tests


def test_counts_and_tables_read_a_model_where_it_is(elsewhere: Elsewhere) -> None:
    here, there = pair(lambda: get_model("final"), elsewhere)
    for count in (budget.count_parameters, budget.block_params, budget.parameter_report, budget.params_by_kind,
                  partial(budget.check_budget, limit=10**9), summary_lines, inside.blocks):
        assert repr(count(there)) == repr(count(here))
    assert layer_table(there).to_text() == layer_table(here).to_text()
    trace = trace_forward(there, (1, 28, 28), model_device(there))
    assert trace.output.device == ELSEWHERE and len(trace.calls) == len(layer_table(here).rows)
    assert [text.get_text() for text in plot_params(there).axes[0].get_xticklabels()] == \
        [text.get_text() for text in plot_params(here).axes[0].get_xticklabels()]


def test_the_look_inside_helpers_run_on_the_models_device(elsewhere: Elsewhere) -> None:
    here, there = pair(lambda: get_model("skeleton"), elsewhere)
    images = digits(2)
    assert inside.rf_boxes(there) == inside.rf_boxes(here)
    erf = inside.effective_receptive_field(there, images)
    assert erf.device == CPU and torch.allclose(erf, inside.effective_receptive_field(here, images))
    outputs, expected = inside.block_outputs(there, images), inside.block_outputs(here, images)
    assert list(outputs) == list(expected)
    assert all(out.device == CPU and torch.allclose(out, expected[name]) for name, out in outputs.items())
    assert list(inside.block_outputs(there, images[0], train_mode=True)) == list(expected)
    inside.plot_feature_maps(there, images[0, 0], title="on the model's device")
    inside.plot_rf_on_digit(there, images[0, 0], erf)
    assert model_device(there) == ELSEWHERE and there.training  # where it was, in the mode it was in


def train_briefly(model: nn.Module, batches: InMemoryLoader) -> tuple[History, inside.ActivationStats, Any]:
    """Evaluate `model`, then train it one short epoch where it is, recording its activations; return the figures."""
    stats, where = inside.ActivationStats(every=1), model_device(model)
    stats.attach(model)
    before = evaluate(model, batches, where)
    optimizer, schedule = make_optimizer(model, Recipe(lr=0.05), len(batches), epochs=1)
    torch.manual_seed(1)  # the same dropout masks on both devices
    history = fit(model, batches, {"test": batches}, optimizer, schedule, epochs=1, device=where, progress=False)
    return history, stats, before


def test_the_loop_and_its_pieces_run_on_the_models_device(elsewhere: Elsewhere, tmp_path: Path) -> None:
    here, model = pair(lambda: get_model("final"), elsewhere)
    images, labels = load_split(False)
    batches = InMemoryLoader(images[:64], labels[:64], batch_size=32)  # on the CPU, as a loader gives them
    (history, stats, before), (expected, expected_stats, expected_before) = \
        train_briefly(model, batches), train_briefly(here, batches)
    assert before == expected_before and stats.means == expected_stats.means
    assert [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history.epochs] == \
        [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in expected.epochs]
    where = model_device(model)
    assert where == ELSEWHERE
    predicted, true = predict(model, batches, where)
    assert predicted.device == true.device == CPU and torch.equal(predicted, predict(here, batches, CPU)[0])
    x = next(iter(batches))[0].to(where)
    assert Autocast(model, "cpu").eval()(x).dtype == torch.float32
    runs.save_checkpoint(model, tmp_path / "model.pt")
    fresh = elsewhere.place(get_model("final"))
    assert model_device(runs.load_checkpoint(fresh, tmp_path / "model.pt")) == ELSEWHERE
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    moved, amp = runnable(get_model("final"), Speed(), ELSEWHERE)
    assert model_device(moved) == ELSEWHERE and amp is False


def test_how_a_network_starts_is_measured_where_it_is(elsewhere: Elsewhere) -> None:
    here, model = pair(lambda: get_model("transitions"), elsewhere)
    images, labels = load_split(False)
    batches = InMemoryLoader(images[:64], labels[:64], batch_size=32)
    x, y = next(iter(batches))
    figures = [inside.start_figures(net, x, y) for net in (model, here)]
    assert figures[0] == figures[1] and figures[0].gradient_ratios
    shares = [inside.prediction_shares(net, batches) for net in (model, here)]
    assert all(torch.equal(a, b) for a, b in zip(*shares, strict=True))
    assert model_device(model) == ELSEWHERE
    assert shares[0][0].sum().item() == pytest.approx(100.0) and shares[0][1].sum().item() == pytest.approx(100.0)


def test_the_graphed_loop_runs_its_step_where_the_model_is(elsewhere: Elsewhere) -> None:
    here, model = pair(lambda: get_model("final"), elsewhere)
    images, labels = load_split(False)
    batches = InMemoryLoader(images[:80], labels[:80], batch_size=32)  # 32, 32 and 16, on the CPU
    histories = []
    for net in (model, here):
        optimizer, schedule = make_optimizer(net, Recipe(lr=0.05, nesterov=True), len(batches), epochs=1)
        torch.manual_seed(1)
        histories.append(fit_graphed(net, batches, {"test": batches}, optimizer, schedule, epochs=1,
                                     device=model_device(net), progress=False))
    assert model_device(model) == ELSEWHERE
    assert [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in histories[0].epochs] == \
        [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in histories[1].epochs]


def test_the_weight_average_follows_the_model_where_it_is(elsewhere: Elsewhere) -> None:
    torch.manual_seed(0)
    model = elsewhere.place(get_model("final"))
    images, labels = load_split(False)
    batches = InMemoryLoader(images[:64], labels[:64], batch_size=32)
    optimizer, schedule = make_optimizer(model, Recipe(lr=0.05), len(batches), epochs=1)
    run = WeightAverage(model, model, optimizer, 0.9)
    fit(run, batches, {"test": batches}, optimizer, schedule, epochs=1, device=model_device(model), progress=False)
    assert model_device(runs.evaluated(run, model)) == ELSEWHERE


@pytest.mark.slow
def test_train_recipe_runs_where_it_is_told(elsewhere: Elsewhere) -> None:
    for data in ("memory", "dataloader"):
        model, history = runs.train_recipe(lambda: elsewhere.place(get_model("final")),
                                           get_recipe("final").with_overrides(batch_size=16), device=ELSEWHERE,
                                           speed=Speed(data=data), progress=False, smoke=True)
        assert model_device(model) == ELSEWHERE and history.meta["device"] == "meta" and history.epochs


def test_the_exercise_readers_probe_where_the_model_is(elsewhere: Elsewhere) -> None:
    here, there = pair(lambda: get_model("gap"), elsewhere)
    out = exercise.output_on_zeros(there, (1, 28, 28))
    assert out.device == CPU and torch.equal(out, exercise.output_on_zeros(here, (1, 28, 28)))
    assert exercise.log_probs_problem(out) is None
    assert exercise.log_probs_problem(there.eval()(torch.zeros(2, 1, 28, 28, device=ELSEWHERE))) is None
    table = exercise.table_of(there, (1, 28, 28))
    assert table.to_text() == exercise.table_of(here, (1, 28, 28)).to_text()
    assert [type(m) for _, m in exercise.rows_with_modules(there, table)] == \
        [type(m) for _, m in exercise.rows_with_modules(here, exercise.table_of(here, (1, 28, 28)))]
    assert [type(m) for m in exercise.leaf_modules(there)] == [type(m) for m in exercise.leaf_modules(here)]
    assert exercise.parameter_problem(there, 10, 5) == exercise.parameter_problem(here, 10, 5)
    assert exercises.advice(there) == exercises.advice(here)


def graded_on_the_gpu(names: list[str], mode: Elsewhere) -> None:
    """Grade the instructor's answers to `names` (built as tests/test_exercises.py builds them) placed on `mode`."""
    key = student_key({"STUDENT": "anonymous"})
    answers = importlib.import_module("test_exercises").solutions(key, names)
    for name, answer in answers.items():
        result = EXERCISES[name].grade(mode.place(answer), key)
        assert result.passed and result.points == EXERCISES[name].max_points, (name, result.message)


def test_a_students_model_on_the_gpu_earns_full_points(elsewhere: Elsewhere) -> None:
    """Before the fix the probes were made on the CPU, and such a student was told the model "fails on a batch"."""
    graded_on_the_gpu(["ex02", "ex03", "ex04", "ex06"], elsewhere)  # the checks that do not train


@pytest.mark.slow
def test_a_students_small_model_on_the_gpu_trains_and_passes(elsewhere: Elsewhere) -> None:
    graded_on_the_gpu(["ex07"], elsewhere)


# --- mocked CUDA identities ---------------------------------------------------------------------------------

GPUS = {"t4": ("Tesla T4", (7, 5)), "h100": ("NVIDIA H100 80GB HBM3", (9, 0))}


@pytest.fixture(params=list(GPUS))
def gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A machine with one CUDA GPU, as torch.cuda reports it: a T4 (capability 7.5) or an H100 (9.0)."""
    name, capability = GPUS[request.param]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return request.param


def test_the_gpu_is_chosen_and_described(gpu: str) -> None:
    assert pick_device() == pick_device("cuda") == torch.device("cuda")
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UsageError, match="not available"):
        pick_device("cuda:1")
    assert describe_device(torch.device("cuda")) == f"cuda ({GPUS[gpu][0]})"
    assert eval_batch_for(torch.device("cuda"), Speed()) == GPU_EVAL_BATCH


def test_mixed_precision_is_bfloat16_only_where_native(gpu: str, recwarn: pytest.WarningsRecorder) -> None:
    cuda = torch.device("cuda")
    if gpu == "t4":  # Turing only emulates bfloat16: float32, with the warning that says so
        assert native_bf16(cuda) is False
        with pytest.warns(UserWarning, match=r"cuda \(Tesla T4\) trains in float32 instead"):
            assert use_amp(cuda, True) is False
    else:
        assert native_bf16(cuda) is True and use_amp(cuda, True) is True
        assert not [w for w in recwarn if "float32 instead" in str(w.message)]
    assert use_amp(cuda, False) is False


def test_train_recipe_autotunes_cudnn_on_a_gpu_only(gpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = (torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    seen: dict[str, bool] = {}

    def record(run: nn.Module, *args: Any, **kwargs: Any) -> History:
        seen[kwargs["device"].type] = torch.backends.cudnn.benchmark
        return kwargs["history"]

    monkeypatch.setattr(runs, "runnable", lambda net, speed, where: (net, use_amp(where, speed.amp)))
    monkeypatch.setattr(runs, "make_loaders", lambda *args, **kwargs: ([batch], {"test": [batch]}))
    monkeypatch.setattr(runs, "fit", record)
    before = torch.backends.cudnn.benchmark
    _, history = runs.train_recipe("final", Recipe(epochs=1), device=torch.device("cuda"), progress=False,
                                   speed=Speed(amp=gpu == "h100"), smoke=True)
    assert seen["cuda"] is True and torch.backends.cudnn.benchmark == before
    assert history.meta["device"] == f"cuda ({GPUS[gpu][0]})" and history.meta["speed"]["amp"] == (gpu == "h100")
    runs.train_recipe("final", Recipe(epochs=1), device=CPU, progress=False, smoke=True)
    assert seen["cpu"] is before


def test_the_graders_threads_do_not_depend_on_a_gpu(gpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with_gpu = grader._student_env(2)["OMP_NUM_THREADS"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert grader._student_env(2)["OMP_NUM_THREADS"] == with_gpu == str(default_threads(2))


def test_the_dataloader_path_pins_and_copies_without_waiting_on_a_gpu_only(mnist_root: Path,
                                                                           elsewhere: Elsewhere) -> None:
    train, eval_sets = dataloaders(64, validation=True, num_workers=0, device="cuda", root=mnist_root)
    assert isinstance(train, DeviceBatches) and train.device == torch.device("cuda") and len(train) == len(train.loader)
    assert [loader.loader.pin_memory for loader in (train, *eval_sets.values())] == [True] * 4
    cpu_train, cpu_sets = dataloaders(64, validation=True, num_workers=0, device="cpu", root=mnist_root)
    assert [loader.pin_memory for loader in (cpu_train, *cpu_sets.values())] == [False] * 4
    batch = (torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    (x, y), = list(DeviceBatches([batch], ELSEWHERE))  # type: ignore[arg-type]
    assert x.device == y.device == ELSEWHERE and elsewhere.moves == [True, True]
