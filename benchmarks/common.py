"""What every benchmark script shares: where results go, refusing smoke mode, and naming the device.

Benchmarks measure full runs; a smoke run (MNIST_LESSON_SMOKE=1) would time a few batches and record
nonsense, so every script refuses it before doing anything.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

from mnist_lesson.config import smoke_mode
from mnist_lesson.results import evidence
from mnist_lesson.runs import describe_device, set_cpu_threads

REPO = Path(__file__).resolve().parents[1]
RESULTS = evidence()  # the package's evidence folder: benchmarks write the files the notebooks read


def refuse_smoke_mode(what: str) -> None:
    """Exit with status 2 and one line when $MNIST_LESSON_SMOKE asks for smoke runs."""
    if smoke_mode():
        print(f"MNIST_LESSON_SMOKE is set: {what}; unset it", file=sys.stderr)
        raise SystemExit(2)


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads in this process (None: torch's choice); one each lets two runs share 2 cores."""
    if threads is not None:
        set_cpu_threads(threads)


def where(device: torch.device) -> str:
    """Return the device, the machine's architecture and the torch version, as results files name them."""
    return f"{describe_device(device)}, {platform.machine()}, torch {torch.__version__}"
