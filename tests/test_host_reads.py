"""No host waits in the training step: every registered recipe trains without reading a value off the device.

On a GPU, reading a tensor's value into Python (`.item()`, `float(t)`, `bool(t)`, `if t > 0:`) makes the host
wait until the device has finished all the work queued so far, so the next step cannot be queued while this one
runs. Every such read dispatches `aten._local_scalar_dense`, on the CPU too: a TorchDispatchMode counts them
during a smoke run, without a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_lesson import runs, train
from mnist_lesson.config import Limits
from mnist_lesson.recipes import RECIPES

CPU = torch.device("cpu")
SHORT = Limits(epochs=1, train_batches=10, eval_batches=1)  # a smoke run, shorter: every recipe is trained
LOG_EVERY = 5  # a progress-bar refresh every 5 batches: 2 in an epoch of 10
READS_PER_REFRESH = 2  # a refresh reads the running loss and accuracy (one wait: the second read finds it done)
READS_PER_EPOCH = 8  # "a few": the epoch's running score and each evaluated set's score, 2 reads each (4 today)


class HostReads(TorchDispatchMode):
    """Counts the reads of a tensor's value into Python (`aten._local_scalar_dense`) made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_every_way_of_reading_a_value() -> None:
    value = torch.ones(())
    with HostReads() as reads:
        value.item(), float(value), bool(value > 0), int(value)
        (value + 1).mul_(2)  # work on the device only: no read
    assert reads.count == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_a_training_step_never_waits_for_the_device(name: str, mnist_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke run (of 10 batches) reads values only a few times an epoch and once per progress-bar refresh,
    whatever the recipe: its weight average (under5k, under8k), schedule and augmentation included. One read a
    step would be 10 more."""
    monkeypatch.setattr(train, "LOG_EVERY", LOG_EVERY)
    monkeypatch.setattr(runs, "limits_for", lambda smoke: SHORT)
    with HostReads() as reads:
        _, history = runs.train_recipe(name, device=CPU, root=mnist_root, progress=True, smoke=True)
    epochs, steps = len(history.epochs), len(history.schedule["lr"])
    assert (epochs, steps) == (SHORT.epochs, SHORT.train_batches)
    allowed = epochs * READS_PER_EPOCH + epochs * (steps // epochs // LOG_EVERY) * READS_PER_REFRESH
    assert reads.count <= allowed, f"{name}: {reads.count} host reads in {steps} steps ({reads.count / steps:.2f} a " \
                                   f"step), at most {allowed} allowed"
