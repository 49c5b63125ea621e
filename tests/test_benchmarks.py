"""Benchmark scripts: they refuse smoke mode (whose timings mean nothing) and measure what they say they do."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["speed.py", "data_paths.py", "seeds.py"])
def test_benchmarks_refuse_smoke_mode(script: str) -> None:
    env = {**os.environ, "MNIST_LESSON_SMOKE": "1"}
    done = subprocess.run([sys.executable, f"benchmarks/{script}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "MNIST_LESSON_SMOKE is set" in done.stderr


def test_trials_refuse_smoke_mode() -> None:
    env = {**os.environ, "MNIST_LESSON_SMOKE": "1"}
    done = subprocess.run([sys.executable, "benchmarks/trials.py", "t", "LadderNet", '{"block1": [8]}'], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "never recorded in smoke mode" in done.stderr


def test_speed_configurations_time_the_final_model(mnist_root: Path) -> None:
    """In smoke mode (a few batches) each timed run reports its wall time, epoch times and accuracy; the
    baseline goes through torchvision's DataLoader and the fast path does not."""
    speed = load_script("speed")
    assert list(speed.CONFIGS)[0] == speed.BASELINE and speed.CONFIGS[speed.BASELINE][0] == "dataloader"
    for name in (speed.BASELINE, "in-memory + channels_last"):
        run = speed.timed_run(name, 1, torch.device("cpu"), seed=0)
        assert run["wall"] >= sum(run["epochs"]) > 0
        assert len(run["epochs"]) == 1 and 0 <= run["test_acc"] <= 100
