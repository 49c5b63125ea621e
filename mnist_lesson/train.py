"""The one training loop of the course: seeding, device choice, `fit`, `evaluate`, and recipes to loaders.

`MNIST_LESSON_SMOKE=1` is the only switch that shrinks training: one epoch over a few batches, so
notebooks and tests run in seconds. Introduced in notebook 00.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mnist_lesson.config import GPU_EVAL_BATCH, Recipe, Speed
from mnist_lesson.loaders import dataloaders, in_memory_loaders
from mnist_lesson.models import count_parameters

SMOKE_ENV = "MNIST_LESSON_SMOKE"
SMOKE_TRAIN_BATCHES = 20  # training batches per epoch in smoke mode
SMOKE_EVAL_BATCHES = 2  # evaluation batches in smoke mode
LOG_EVERY = 25  # batches between progress-bar refreshes (each one waits for the device)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def smoke_mode() -> bool:
    """Return True when $MNIST_LESSON_SMOKE asks for tiny runs (1 epoch, a few batches)."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (CPU and all GPUs) with `seed`."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(name: str = "auto") -> torch.device:
    """Return the requested device, or with "auto" the best available one: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in {"cpu", "cuda", "mps"} and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but there are {torch.cuda.device_count()} GPU(s), "
                         "numbered from 0")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but this machine has no Apple GPU; use --device cpu or auto")
    return torch.device(name)


@dataclass
class EpochStats:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    train_acc: float  # percent, over the (augmented, dropout-on) training batches of this epoch
    test_loss: float
    test_acc: float  # percent
    lr: float  # learning rate of the epoch's last training step
    seconds: float  # wall time of training plus evaluation


@dataclass
class History:
    """Per-epoch statistics of one training run, plus what is needed to tell runs apart."""

    epochs: list[EpochStats] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def column(self, key: str) -> list[float]:
        """Return one statistic across epochs, e.g. history.column("test_acc")."""
        return [getattr(stats, key) for stats in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """Return the history as plain JSON-ready data."""
        return {"meta": self.meta, "epochs": [asdict(stats) for stats in self.epochs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild a history from `to_dict()` output."""
        return cls([EpochStats(**stats) for stats in data["epochs"]], dict(data.get("meta", {})))

    def save(self, path: Path) -> None:
        """Write the history as JSON to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        """Read a history written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def native_bf16(device: torch.device) -> bool:
    """Return whether `device` computes in bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX instructions (where other CPUs would only emulate it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)  # Ampere and later; a T4 or V100 only emulates
    if device.type == "cpu":
        # Private probes (torch 2.1+); an older torch, without them, is treated as unsupported.
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def use_amp(device: torch.device, requested: bool) -> bool:
    """Return whether bfloat16 autocast runs: only when requested and on a device with native bfloat16."""
    if not requested:
        return False
    if not native_bf16(device):
        warnings.warn(f"mixed precision (amp) needs native bfloat16 (a recent CUDA GPU, or a CPU with AVX512-BF16 "
                      f"or AMX); {describe_device(device)} trains in float32 instead", stacklevel=2)
        return False
    return True


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """Return bfloat16 autocast for the forward pass when `amp` is on, else a context that does nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def maybe_compile(model: nn.Module, requested: bool) -> nn.Module:
    """Return `model` compiled by torch.compile when requested and available, else `model` unchanged."""
    if not requested:
        return model
    if not hasattr(torch, "compile"):
        warnings.warn(f"torch {torch.__version__} has no torch.compile; training without it", stacklevel=2)
        return model
    # The compiled wrapper shares the model's parameters, so the optimizer and checkpoints see the same tensors.
    return torch.compile(model)


def evaluate(model: nn.Module, batches: Batches, device: torch.device,
             max_batches: int | None = None, amp: bool = False) -> tuple[float, float]:
    """Return (mean loss, accuracy in percent) of `model` over `batches`, in eval mode without gradients."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    with torch.no_grad():
        for x, y in itertools.islice(batches, max_batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp):
                output = model(x)
            output = output.float()
            loss_sum += F.nll_loss(output, y, reduction="sum")
            correct += (output.argmax(dim=1) == y).sum()
            count += len(y)
    if count == 0:
        raise ValueError("evaluate() got no batches")
    return loss_sum.item() / count, 100.0 * correct.item() / count


def predict(model: nn.Module, batches: Batches, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (predicted classes, true labels) of `model` over `batches`, on the CPU (notebook 07)."""
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            predictions.append(model(x.to(device)).argmax(dim=1).cpu())
            labels.append(y.cpu())
    return torch.cat(predictions), torch.cat(labels)


def fit(model: nn.Module, train_batches: Batches, test_batches: Batches, optimizer: torch.optim.Optimizer, *,
        epochs: int, device: torch.device, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scheduler_per_batch: bool = False, progress: bool = True, amp: bool = False,
        on_epoch: Callable[[EpochStats], None] | None = None) -> History:
    """Train `model` for `epochs` epochs, evaluating after each; return the per-epoch History.

    `amp` runs forward passes under bfloat16 autocast (see `use_amp`), evaluation included, so the test
    accuracy is that of the model as it runs; the weights stay float32.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    max_train, max_eval = (SMOKE_TRAIN_BATCHES, SMOKE_EVAL_BATCHES) if smoke_mode() else (None, None)
    if smoke_mode():
        epochs = 1
    history = History()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        count = 0
        total = len(train_batches) if hasattr(train_batches, "__len__") else None
        if total is not None and max_train is not None:
            total = min(total, max_train)
        bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=True,
                   unit="batch", mininterval=1.0)
        for step, (x, y) in enumerate(itertools.islice(train_batches, max_train), start=1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                output = model(x)
            output = output.float()
            loss = F.nll_loss(output, y)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (a schedule may change it next)
            optimizer.step()
            if scheduler is not None and scheduler_per_batch:
                scheduler.step()
            # Running sums stay on the device; reading them (.item()) waits for it, so only now and then.
            loss_sum += loss.detach() * len(y)
            correct += (output.argmax(dim=1) == y).sum()
            count += len(y)
            bar.update(1)
            if progress and step % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", acc=f"{100 * correct.item() / count:.2f}%")
        bar.close()
        if count == 0:
            raise ValueError("fit() got no training batches")
        if scheduler is not None and not scheduler_per_batch:
            scheduler.step()
        test_loss, test_acc = evaluate(model, test_batches, device, max_eval, amp=amp)
        stats = EpochStats(epoch, loss_sum.item() / count, 100.0 * correct.item() / count, test_loss, test_acc,
                           lr, time.perf_counter() - start)
        history.epochs.append(stats)
        if progress:
            print(f"epoch {epoch:2d}/{epochs}: train loss {stats.train_loss:.4f} acc {stats.train_acc:.2f}% | "
                  f"test loss {stats.test_loss:.4f} acc {stats.test_acc:.2f}% | lr {stats.lr:.4g} | "
                  f"{stats.seconds:.1f} s", flush=True)
        if on_epoch is not None:
            on_epoch(stats)
    return history


def make_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """Return (SGD optimizer, scheduler or None, whether the scheduler steps per batch) for `recipe`."""
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, epochs=recipe.epochs,
                                                        steps_per_epoch=steps_per_epoch)
        return optimizer, scheduler, True
    if recipe.schedule == "step":
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, recipe.step_size, recipe.gamma), False
    if recipe.schedule == "constant":
        return optimizer, None, False
    raise ValueError(f"unknown schedule {recipe.schedule!r}; use constant, onecycle or step")


def make_loaders(recipe: Recipe, device: torch.device, seed: int = 0,
                 root: str | os.PathLike[str] | None = None,
                 eval_batch_size: int | None = None) -> tuple[Batches, Batches]:
    """Return (train, test) batches for `recipe` on its data path (in-memory tensors or DataLoader).

    `eval_batch_size` overrides the recipe's evaluation batch size (it changes speed, not results).
    """
    options = dict(eval_batch_size=eval_batch_size or recipe.eval_batch_size, rotate_degrees=recipe.rotate_degrees,
                   translate=recipe.translate, device=device, seed=seed, root=root)
    if recipe.data == "memory":
        return in_memory_loaders(recipe.batch_size, **options)
    if recipe.data == "dataloader":
        return dataloaders(recipe.batch_size, **options)
    raise ValueError(f"unknown data path {recipe.data!r}; use memory or dataloader")


def prepare_model(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    """Return `model` moved to `device`, in channels-last memory layout when the recipe asks for it."""
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def eval_batch_for(device: torch.device, recipe: Recipe, speed: Speed) -> int:
    """Return the evaluation batch size a run uses: the speed option's, else the whole test set on a GPU."""
    if speed.eval_batch_size is not None:
        if speed.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive integer, got {speed.eval_batch_size}")
        return speed.eval_batch_size
    return GPU_EVAL_BATCH if device.type == "cuda" else recipe.eval_batch_size


def train_recipe(build: Callable[[], nn.Module], recipe: Recipe, *, device: torch.device, seed: int = 0,
                 root: str | os.PathLike[str] | None = None, progress: bool = True,
                 speed: Speed | None = None) -> tuple[nn.Module, History]:
    """Seed, build the model with `build()`, train it with `recipe` on `device`; return (model, History).

    `speed` picks how the run executes (mixed precision, torch.compile, evaluation batch); see `Speed`.
    The model returned is the plain module, never the compiled wrapper, so it saves and inspects as usual.
    """
    speed = speed or Speed()
    seed_everything(seed)  # before building, so the initial weights depend on the seed too
    model = prepare_model(build(), recipe, device)
    train_batches, test_batches = make_loaders(recipe, device, seed, root, eval_batch_for(device, recipe, speed))
    optimizer, scheduler, per_batch = make_optimizer(model, recipe, len(train_batches))
    amp = use_amp(device, speed.amp)
    autotune = torch.backends.cudnn.benchmark
    # On a GPU, let cuDNN time its algorithms once per input shape (all training batches but the last share
    # one); it may pick different algorithms from run to run, so GPU runs repeat only up to rounding.
    torch.backends.cudnn.benchmark = autotune or device.type == "cuda"
    try:
        history = fit(maybe_compile(model, speed.compile), train_batches, test_batches, optimizer,
                      epochs=recipe.epochs, device=device, scheduler=scheduler, scheduler_per_batch=per_batch,
                      progress=progress, amp=amp)
    finally:
        torch.backends.cudnn.benchmark = autotune
    history.meta.update(recipe=recipe.to_dict(), seed=seed, device=describe_device(device),
                        smoke=smoke_mode(), torch=torch.__version__,
                        params=count_parameters(model), speed={**speed.to_dict(), "amp": amp})
    return model, history


def describe_device(device: torch.device) -> str:
    """Return a readable device name, e.g. "cuda (NVIDIA T4)" or "cpu (2 threads)"."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Save the model's state_dict (tensors only) to `path`."""
    torch.save(model.state_dict(), path)


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load a state_dict saved by `save_checkpoint` into `model` (weights_only: no code runs); return it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model
