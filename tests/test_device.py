"""The device, its threads and the speed levers: clear errors, and clean fallbacks where a lever cannot work."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from mnist_lesson import device
from mnist_lesson.config import GPU_EVAL_BATCH, Speed, UsageError
from mnist_lesson.device import eval_batch_for, native_bf16, pick_device, runnable, use_amp

CPU = torch.device("cpu")


def test_pick_device_names_the_alternatives() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    for bad in ("tpu", "cuda:x", "cuda:"):
        with pytest.raises(UsageError, match="unknown device"):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="not available on this machine; available: auto, cpu"):
            pick_device("cuda")


def test_speed_options_fall_back_cleanly_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "native_bf16", lambda where: False)  # a CPU without AVX512-BF16 or AMX
    with pytest.warns(UserWarning, match="trains in float32 instead"):
        assert use_amp(CPU, True) is False
    assert use_amp(CPU, False) is False
    monkeypatch.setattr(device, "native_bf16", lambda where: True)
    assert use_amp(CPU, True) is True
    monkeypatch.undo()
    assert native_bf16(torch.device("meta")) is False
    assert isinstance(native_bf16(CPU), bool)
    assert eval_batch_for(CPU, Speed()) == 1000
    assert eval_batch_for(torch.device("cuda"), Speed()) == GPU_EVAL_BATCH
    assert eval_batch_for(CPU, Speed(eval_batch_size=64)) == 64
    with pytest.raises(UsageError, match="eval_batch_size"):
        Speed(eval_batch_size=0)
    model = nn.Linear(2, 2)
    run, amp = runnable(model, Speed(channels_last=False), CPU)
    assert run is model and amp is False
    monkeypatch.delattr(torch, "compile")  # as on a torch too old to have it
    with pytest.warns(UserWarning, match="has no torch.compile"):
        assert runnable(model, Speed(compile=True, channels_last=False), CPU)[0] is model


def test_busy_cores_sees_other_work_now() -> None:
    """A process spinning on one core shows as (at least most of) a busy core, measured while it runs."""
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = device.busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.7, busy


@pytest.mark.parametrize(("busy", "processes", "threads"), [
    (0.0, 1, 2), (0.3, 1, 2), (0.8, 1, 1), (1.0, 1, 1), (2.0, 1, 1), (0.0, 2, 1), (None, 1, 1)])
def test_default_threads_takes_the_share_of_the_free_cores(busy: float | None, processes: int, threads: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On 2 cores: both when nothing else runs; one when another run keeps a core busy (two threads each would wait
    on each other), or when two processes share the machine. Without /proc/stat, the load average decides."""
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(device, "busy_cores", lambda seconds=0.2: busy)
    monkeypatch.setattr(device.os, "getloadavg", lambda: (1.7, 1.0, 1.0), raising=False)
    assert device.default_threads(processes) == threads


def test_a_process_allowed_fewer_cores_counts_only_its_share_of_the_machines_load(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """In a container allowed 2 of a 64-core machine's cores, 30 busy cores elsewhere leave about half of ours."""
    monkeypatch.setattr(device.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(device, "busy_cores", lambda seconds=0.2: 30.0)
    assert device.default_threads() == 1
    monkeypatch.setattr(device, "busy_cores", lambda seconds=0.2: 0.0)
    assert device.default_threads() == 2

