"""Where and how fast a run computes: seeding, the device and its CPU threads, and the speed levers (channels-last
layout, torch.compile, bfloat16 autocast, the evaluation batch) that change a run's wall time, not what it learns.

`pick_device` and `set_cpu_threads` open every notebook (its second cell); `runs.train_recipe` applies the rest.
Introduced in notebook 00.
"""

from __future__ import annotations

import itertools
import os
import platform
import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist_lesson.config import CPU_EVAL_BATCH, GPU_EVAL_BATCH, Speed, UsageError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (CPU and all GPUs) with `seed`."""
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


def model_device(model: nn.Module) -> torch.device:
    """Return the device `model` computes on: that of its first parameter, else of its first buffer, else the CPU.
    Every helper that runs a model builds or moves its inputs there, so a model trained on a GPU can be looked
    into, evaluated and graded where it is."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def cpu_name() -> str:
    """Return the CPU's model name (e.g. "AMD EPYC"), or its architecture where the name is not known."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def busy_cores(seconds: float = 0.2) -> float | None:
    """Return how many cores were busy over the next `seconds` (from /proc/stat), or None where it cannot be read.

    The caller sleeps meanwhile, so what it measures is other work. Unlike the load average, which decays over a
    minute, it does not count a run that has just finished (a notebook run right after another)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    return 0.0 if elapsed <= 0 else (os.cpu_count() or 1) * (elapsed - (idle1 - idle0)) / elapsed


def default_threads(processes: int = 1) -> int:
    """Return the CPU threads one of `processes` processes should compute with: its share of the cores that other
    work leaves free (at least one), because on a shared 2-core CPU two threads per process wait on each other and
    ran several times slower. Busy cores are measured now (`busy_cores`), else read from the load average."""
    host = os.cpu_count() or 1
    # The cores this process may use (a container or `taskset` may allow fewer than the machine has); what other
    # work keeps busy is measured machine-wide, so only its share of these cores counts against them.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else host
    busy = busy_cores()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, round(cores - busy * cores / max(host, cores)))
    return max(1, free // max(1, processes))


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


def graph_on(speed: Speed, device: torch.device) -> bool:
    """Return whether a run replays its steps from a CUDA graph: only when asked and on a CUDA device."""
    if speed.graph and device.type != "cuda":
        warnings.warn(f"CUDA graphs need a CUDA device; {describe_device(device)} trains step by step instead",
                      stacklevel=2)
        return False
    return speed.graph


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
