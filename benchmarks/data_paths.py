"""Benchmark: one epoch of the same model the seed's way and the course's fast way, side by side.

All configurations run in this one process, on the same device, alternating, with the same model,
recipe and seed. The baseline is the seed's set-up: torchvision's DataLoader with ToTensor + Normalize,
batch 128, 2 workers, default memory layout. The fast path is the package default: the in-memory
loader and a channels-last model. The two mixed configurations show which lever gives what.

    python benchmarks/data_paths.py [--model seed] [--device auto] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

from mnist_lesson.models import get_model, get_recipe
from mnist_lesson.results import write_json
from mnist_lesson.train import describe_device, pick_device, smoke_mode, train_recipe

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (data path, channels_last); the first is the baseline, the last the package default.
CONFIGS: dict[str, tuple[str, bool]] = {
    "seed: DataLoader": ("dataloader", False),
    "DataLoader + channels_last": ("dataloader", True),
    "in-memory": ("memory", False),
    "fast: in-memory + channels_last": ("memory", True),
}


def epoch_seconds(model_name: str, data: str, channels_last: bool, device: torch.device,
                  seed: int = 0) -> tuple[float, float]:
    """Return (seconds of one epoch, training plus evaluation, as fit measured it; test accuracy)."""
    recipe = get_recipe(model_name).with_overrides(data=data, channels_last=channels_last, epochs=1)
    _, history = train_recipe(lambda: get_model(model_name), recipe, device=device, seed=seed, progress=False)
    return history.epochs[0].seconds, history.epochs[0].test_acc


def main() -> int:
    """Run every configuration `--repeats` times, print the figures and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="run every configuration this many times")
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/data_paths_DEVICE.json)")
    args = parser.parse_args()
    if smoke_mode():
        print("MNIST_LESSON_SMOKE is set: it would time a few batches, not epochs; unset it", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    where = f"{describe_device(device)}, {platform.machine()}, torch {torch.__version__}"
    print(f"device: {where}")
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for repeat in range(args.repeats):
        for name, (data, channels_last) in CONFIGS.items():
            seconds, acc = epoch_seconds(args.model, data, channels_last, device, seed=repeat)
            times[name].append(seconds)
            print(f"  {name:32s} {seconds:6.1f} s/epoch   test acc {acc:.2f}%", flush=True)
    baseline = statistics.median(times["seed: DataLoader"])
    print(f"{args.model} on {where}, median of {args.repeats}:")
    for name, values in times.items():
        print(f"  {name:32s} {statistics.median(values):6.1f} s/epoch   {statistics.median(values) / baseline:.2f}x")
    out = args.json or RESULTS / f"data_paths_{device.type}.json"
    write_json(out, {"device": where, "model": args.model, "configs": {k: list(v) for k, v in CONFIGS.items()},
                     "seconds": times})
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
