"""A recipe turned into a run: seeding, the device, the speed levers, loaders, optimizer and schedule, then `fit`.

`train_recipe` is where smoke mode is resolved (into explicit limits on epochs and batches) and where a
run records what produced it: recipe, seed, device, speed levers and the code's version. Introduced in
notebook 00.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import (
    CPU_EVAL_BATCH,
    GPU_EVAL_BATCH,
    Augment,
    Limits,
    Recipe,
    Speed,
    UsageError,
    limits_for,
    smoke_mode,
)
from mnist_lesson.loaders import EvalSets, dataloaders, in_memory_loaders
from mnist_lesson.train import Batch, History, NonFiniteLoss, Schedule, fit

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (CPU and all GPUs) with `seed`."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """Return the device names this machine can train on, e.g. ["cpu", "cuda", "cuda:0"]."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if _has_mps():
        names.append("mps")
    return names


def pick_device(name: str = "auto") -> torch.device:
    """Return the requested device, or with "auto" the best available one: cuda, then mps, then cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _has_mps() else "cpu")
    if name not in {"cpu", "cuda", "mps"} and not re.fullmatch(r"cuda:\d+", name):
        raise UsageError(f"unknown device {name!r}; use {DEVICES}")
    if name not in available_devices():
        raise UsageError(f"device {name!r} is not available on this machine; available: "
                         f"{', '.join(['auto', *available_devices()])}")
    return torch.device(name)


def cpu_name() -> str:
    """Return the CPU's model name (e.g. "AMD EPYC"), or its architecture where the name is not known."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def default_threads(processes: int = 1) -> int:
    """Return the CPU threads one of `processes` processes should compute with: its share of the cores, or one
    when the CPU is already busy with other work (one-minute load average at least the cores minus a half),
    because on a shared 2-core CPU two threads per process wait on each other and ran several times slower."""
    cores = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores - 0.5
    return 1 if busy else max(1, cores // max(1, processes))


def set_cpu_threads(threads: int | None = None) -> int:
    """Set and return the number of threads torch computes with on the CPU: `threads`, else `default_threads()`."""
    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be a whole number of at least 1, got {threads!r}")
    torch.set_num_threads(threads)
    return threads


def describe_device(device: torch.device) -> str:
    """Return a readable device name, e.g. "cuda (NVIDIA T4)" or "cpu (AMD EPYC, 2 threads)"."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"
    return str(device)


# --- speed levers: they change how fast a run goes, not what it learns ---------------------------------


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


class Autocast(nn.Module):
    """Runs the wrapped model's forward pass under bfloat16 autocast and returns float32 log-probabilities."""

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


def runnable(model: nn.Module, speed: Speed, device: torch.device) -> tuple[nn.Module, bool]:
    """Return (the module to train and evaluate, whether amp is on): `model` moved to `device`, in channels-last
    layout, compiled and under autocast as `speed` asks. Every form shares the model's parameters."""
    model.to(device)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    run = model
    if speed.compile:
        if hasattr(torch, "compile"):
            run = torch.compile(run)
        else:
            warnings.warn(f"torch {torch.__version__} has no torch.compile; training without it", stacklevel=2)
    amp = use_amp(device, speed.amp)
    return (Autocast(run, device.type) if amp else run), amp


def eval_batch_for(device: torch.device, speed: Speed) -> int:
    """Return the evaluation batch size a run uses: the speed option's, else the whole test set on a GPU."""
    if speed.eval_batch_size is not None:
        return speed.eval_batch_size
    return GPU_EVAL_BATCH if device.type == "cuda" else CPU_EVAL_BATCH


# --- the pieces of a run ----------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int,
                   epochs: int | None = None) -> tuple[torch.optim.Optimizer, Schedule]:
    """Return the SGD optimizer of `recipe` and its schedule, stepped once per batch for `epochs` epochs."""
    epochs = recipe.epochs if epochs is None else epochs
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle":
        return optimizer, Schedule(optimizer, torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=epochs * steps_per_epoch, pct_start=recipe.warmup))
    if recipe.schedule == "step":
        return optimizer, Schedule(optimizer, torch.optim.lr_scheduler.StepLR(
            optimizer, recipe.step_size * steps_per_epoch, recipe.gamma))
    return optimizer, Schedule(optimizer)


class WeightAverage(nn.Module):
    """A model in training plus an exponential moving average of its weights and buffers, evaluated in its place.

    In train mode it runs the model being trained; in eval mode, the average. The average follows every
    optimizer step through an optimizer hook, so the training loop stays exactly as it is.
    """

    def __init__(self, run: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, decay: float,
                 amp_device: str | None = None) -> None:
        super().__init__()
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.run, self.model = run, model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.evaluated = Autocast(self.average.module, amp_device) if amp_device else self.average.module
        optimizer.register_step_post_hook(lambda *args: self.average.update_parameters(self.model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x) if self.training else self.evaluated(x)


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


def code_version() -> str:
    """Return the version of the package's code: "git SHA" (+ " dirty" with uncommitted changes) in a checkout,
    else a hash of its source files."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top and (Path(top) / package.name).resolve() == package:
        # The package's code only: the evidence folder, which the benchmarks write, does not make it dirty.
        sha, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", ".", ":!evidence")
        if sha is not None and changes is not None:
            return f"git {sha[:12]}" + (" dirty" if changes else "")
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"source sha256 {digest.hexdigest()[:16]}"


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
    from mnist_lesson.models import MODELS, get_model, get_recipe

    if isinstance(model, str):
        name, build, recipe = model, lambda: get_model(model), recipe or get_recipe(model)
    else:
        name = next((key for key, value in MODELS.items() if value is model), getattr(model, "__name__", "model"))
        build = model
    if recipe is None:
        raise UsageError("train_recipe needs a recipe for a model that is not registered by name")
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
    torch.backends.cudnn.benchmark = autotune or device.type == "cuda"
    try:
        fit(run, train, eval_sets, optimizer, schedule, epochs=epochs, device=device, progress=progress,
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
    return run.average.module if isinstance(run, WeightAverage) else net


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Save the model's state_dict (tensors only) to `path`."""
    torch.save(model.state_dict(), path)


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load a state_dict saved by `save_checkpoint` into `model` (weights_only: no code runs); return it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model

