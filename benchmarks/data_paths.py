"""Benchmark: one epoch of the same model the seed's way and the course's fast way, side by side.

All configurations run in this one process, on the same device, alternating, with the same model,
recipe and seed. The baseline is the seed's set-up: torchvision's DataLoader with ToTensor + Normalize,
batch 128, 2 workers, default memory layout. The fast path is the package default: the in-memory
loader and a channels-last model. The two mixed configurations show which lever gives what.

    python benchmarks/data_paths.py [--model seed] [--device auto] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mnist_lesson.models import get_model, get_recipe
from mnist_lesson.train import (
    describe_device,
    fit,
    make_loaders,
    make_optimizer,
    pick_device,
    prepare_model,
    seed_everything,
)

# name -> (data path, channels_last); the first is the baseline, the last the package default.
CONFIGS: dict[str, tuple[str, bool]] = {
    "seed: DataLoader": ("dataloader", False),
    "DataLoader + channels_last": ("dataloader", True),
    "in-memory": ("memory", False),
    "fast: in-memory + channels_last": ("memory", True),
}


def epoch_seconds(model_name: str, data: str, channels_last: bool, device: torch.device,
                  seed: int = 0) -> tuple[float, float]:
    """Return (seconds for one training epoch plus evaluation, test accuracy) for one configuration."""
    recipe = get_recipe(model_name).with_overrides(data=data, channels_last=channels_last, epochs=1)
    seed_everything(seed)
    model = prepare_model(get_model(model_name), recipe, device)
    train_batches, test_batches = make_loaders(recipe, device, seed)
    optimizer, scheduler, per_batch = make_optimizer(model, recipe, len(train_batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    history = fit(model, train_batches, test_batches, optimizer, epochs=1, device=device, scheduler=scheduler,
                  scheduler_per_batch=per_batch, progress=False)
    return time.perf_counter() - start, history.epochs[-1].test_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="run every configuration this many times")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "model": args.model, "configs": {k: list(v) for k, v in CONFIGS.items()},
                       "seconds": times}, f, indent=2)


if __name__ == "__main__":
    main()
