"""The device, its threads and the speed levers: clear errors, and clean fallbacks where a lever cannot work."""

from __future__ import annotations

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
