"""A recipe turned into a run: seeding, the device, the speed levers, loaders, optimizer and schedule, then `fit`.

`train_recipe` is where smoke mode is resolved (into explicit limits on epochs and batches) and where a
run records what produced it: recipe, seed, device, speed levers and the code's version. The pieces it
puts together live with their subject: the device and speed levers in `device.py`, the optimizer,
schedule and weight average in `recipes.py`, the loaders in `loaders.py`, the loop in `train.py`.
Introduced in notebook 00.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import Augment, Limits, Recipe, Speed, UsageError, limits_for, smoke_mode
from mnist_lesson.device import describe_device, eval_batch_for, graph_on, runnable, seed_everything
from mnist_lesson.files import code_version
from mnist_lesson.graphed import fit_graphed
from mnist_lesson.loaders import EvalSets, dataloaders, in_memory_loaders
from mnist_lesson.models import MODELS, get_model
from mnist_lesson.recipes import WeightAverage, get_recipe, make_optimizer
from mnist_lesson.train import Batch, History, NonFiniteLoss, fit


class FirstBatches:
    """The first `limit` batches of `batches` (all of them when `limit` is None), with a length."""

    def __init__(self, batches: Iterable[Batch], limit: int | None) -> None:
        self.batches, self.limit = batches, limit

    def __len__(self) -> int:
        total = len(self.batches)  # type: ignore[arg-type]
        return total if self.limit is None else min(total, self.limit)

    def __iter__(self) -> Iterator[Batch]:
        for index, batch in enumerate(self.batches):
            if self.limit is not None and index >= self.limit:
                return
            yield batch


def make_loaders(batch_size: int, augment: Augment, speed: Speed, device: torch.device, *, seed: int = 0,
                 validation: bool = False, root: str | Path | None = None,
                 limits: Limits = Limits()) -> tuple[FirstBatches, EvalSets]:
    """Return the training batches and the evaluation sets on the data path `speed` picks, cut to `limits`."""
    make = in_memory_loaders if speed.data == "memory" else dataloaders
    train, eval_sets = make(batch_size, augment, validation=validation, eval_batch_size=eval_batch_for(device, speed),
                            device=device, seed=seed, root=root)
    return (FirstBatches(train, limits.train_batches),
            {name: FirstBatches(batches, limits.eval_batches) for name, batches in eval_sets.items()})


class TrainingStopped(RuntimeError):
    """Training ended before its last epoch; `history` holds the epochs that finished and `model` their weights."""

    def __init__(self, reason: str, history: History, model: nn.Module) -> None:
        super().__init__(reason)
        self.reason, self.history, self.model = reason, history, model


def train_recipe(model: str | Callable[[], nn.Module], recipe: Recipe | None = None, *, device: torch.device,
                 seed: int = 0, validation: bool = False, root: str | Path | None = None, speed: Speed = Speed(),
                 progress: bool = True, smoke: bool | None = None) -> tuple[nn.Module, History]:
    """Seed, build the model, train it with `recipe` on `device`; return (model, History).

    `model` is a registered name (its recipe is the default) or a function that builds a fresh model. The model
    returned is the one evaluated: with `recipe.ema`, the moving average of the weights.
    `validation` holds out the last 10,000 training images and evaluates on them too: design choices are
    judged there, never on the test set. `smoke` (default: $MNIST_LESSON_SMOKE) makes a tiny run of one
    epoch over a few batches. Raises TrainingStopped, with the finished epochs, on Ctrl-C or a diverging loss.
    """
    if isinstance(model, str):
        name, build, recipe = model, lambda: get_model(model), recipe or get_recipe(model)
    else:
        name = next((key for key, value in MODELS.items() if value is model), getattr(model, "__name__", "model"))
        build = model
    if recipe is None:
        raise UsageError("train_recipe needs a recipe for a model that is not registered by name")
    if speed.graph and recipe.ema:
        raise UsageError("graph=True (--graph) does not keep a weight average: the recorded step bypasses the "
                         f"optimizer hook it follows; train {name} without it")
    smoke = smoke_mode() if smoke is None else smoke
    limits = limits_for(smoke)
    epochs = limits.epochs or recipe.epochs
    seed_everything(seed)  # before building, so the initial weights depend on the seed too
    net = build()
    run, amp = runnable(net, speed, device)
    start = time.perf_counter()
    train, eval_sets = make_loaders(recipe.batch_size, recipe.augment, speed, device, seed=seed,
                                    validation=validation, root=root, limits=limits)
    optimizer, schedule = make_optimizer(net, recipe, len(train), epochs)
    if recipe.ema:
        run = WeightAverage(run, net, optimizer, recipe.ema, device.type if amp else None)
    history = History(meta=dict(model=name, params=count_parameters(net), recipe=recipe.to_dict(), seed=seed,
                                validation=validation, epochs_planned=epochs, smoke=smoke,
                                device=describe_device(device), speed={**speed.to_dict(), "amp": amp},
                                torch=torch.__version__, code=code_version(),
                                date=time.strftime("%Y-%m-%d")))
    autotune = torch.backends.cudnn.benchmark
    # On a GPU, let cuDNN time its algorithms once per input shape (all training batches but the last share
    # one); it may pick different algorithms from run to run, so GPU runs repeat only up to rounding.
    # `speed.autotune=False` leaves the choice to cuDNN's heuristics instead, without the timing.
    torch.backends.cudnn.benchmark = autotune or (device.type == "cuda" and speed.autotune)
    loop = fit_graphed if graph_on(speed, device) else fit
    try:
        loop(run, train, eval_sets, optimizer, schedule, epochs=epochs, device=device, progress=progress,
             history=history)
    except (KeyboardInterrupt, NonFiniteLoss) as exc:
        done = len(history.epochs)
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        history.meta["stopped"] = f"{why} (during epoch {done + 1} of {epochs}; {done} finished)"
        raise TrainingStopped(history.meta["stopped"], history, evaluated(run, net)) from exc
    finally:
        torch.backends.cudnn.benchmark = autotune
        history.schedule = schedule.trace()
        history.meta["run_seconds"] = time.perf_counter() - start
    return evaluated(run, net), history


def evaluated(run: nn.Module, net: nn.Module) -> nn.Module:
    """Return the plain module whose weights a run evaluated: the weight average when the recipe keeps one."""
    return run.average if isinstance(run, WeightAverage) else net


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Save the model's state_dict (tensors only) to `path`."""
    torch.save(model.state_dict(), path)


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load a state_dict saved by `save_checkpoint` into `model` (weights_only: no code runs); return it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model

