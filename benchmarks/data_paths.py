"""Benchmark: one epoch of the same model through torchvision's DataLoader and the in-memory path.

Both runs happen in this one process, on the same device, one after the other, with the same
model, recipe and seed; the script prints each epoch time and their ratio. The baseline is the
DataLoader exactly as the seed notebook used it (ToTensor + Normalize, batch 128, 2 workers).

    python benchmarks/data_paths.py [--model seed] [--device auto] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mnist_lesson.models import get_model, get_recipe
from mnist_lesson.train import (
    describe_device,
    fit,
    make_loaders,
    make_optimizer,
    pick_device,
    seed_everything,
)


def epoch_seconds(model_name: str, data: str, device: torch.device, seed: int = 0) -> tuple[float, float]:
    """Return (seconds for one training epoch plus evaluation, test accuracy) on the given data path."""
    recipe = get_recipe(model_name).with_overrides(data=data, epochs=1)
    seed_everything(seed)
    model = get_model(model_name).to(device)
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
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two paths this many times")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = pick_device(args.device)
    where = f"{describe_device(device)}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    print(f"device: {where}")
    times: dict[str, list[float]] = {"dataloader": [], "memory": []}
    for repeat in range(args.repeats):
        for data in times:
            seconds, acc = epoch_seconds(args.model, data, device, seed=repeat)
            times[data].append(seconds)
            print(f"  {data:10s} epoch {seconds:6.1f} s   test acc {acc:.2f}%", flush=True)
    best = {data: min(values) for data, values in times.items()}
    ratio = best["memory"] / best["dataloader"]
    print(f"{args.model}: DataLoader {best['dataloader']:.1f} s/epoch, in-memory {best['memory']:.1f} s/epoch, "
          f"ratio {ratio:.2f}x (target <= 0.70x) on {where}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "model": args.model, "seconds": times, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
