"""Benchmark: how fast a model trains the assignment's way and with each speed lever, side by side.

Every configuration runs in this one process, on the same device, alternating, with the same model,
recipe and seeds; only the `Speed` of the run changes (how it executes, never what it learns). The
baseline is the assignment's set-up: torchvision's DataLoader (per-image transforms, 2 workers), default
memory layout, eager float32. Two modes:

- `levers` (default): the final model and its recipe (batch 64, rotation and shift, one-cycle): the
  baseline, the package default (data and augmentation on the device, channels-last), and the default
  with torch.compile, with bfloat16 autocast, with both (autocast only on devices with native
  bfloat16: recent CUDA GPUs, CPUs with AVX512-BF16 or AMX), and with each step replayed from a CUDA graph
  (CUDA only);
- `data-paths`: the assignment's model and recipe for one epoch: the baseline, each of the two levers of
  the package default alone, and both.

    python benchmarks/speed.py [--mode levers|data-paths] [--epochs N] [--repeats N] [--device auto] [--json FILE]

With MNIST_LESSON_SMOKE=1 it refuses to run, unless `--smoke-check --json FILE` (FILE outside
mnist_lesson/evidence/) asks for a check of its plumbing: smoke-sized runs, a file marked `"smoke": true`.

Each run is timed from building the loaders (data loading included) to the last evaluation. The table
reports the whole run and the median of its epochs after the first (which pays for compiling), with the
ratio of that steady epoch to the baseline's. `--epochs 15` times the full recipe, as
`python -m mnist_lesson train final` runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import refuse_smoke_mode, set_threads, where

from mnist_lesson.config import Speed
from mnist_lesson.device import describe_device, native_bf16, pick_device
from mnist_lesson.recipes import get_recipe
from mnist_lesson.records import evidence, steady_seconds, summarize_speed, write_json
from mnist_lesson.runs import train_recipe

BASELINE = "assignment's DataLoader"
ASSIGNMENT_WAY = Speed(data="dataloader", channels_last=False)
MODES: dict[str, tuple[str, int, dict[str, Speed]]] = {  # mode -> (model, default epochs, configurations)
    "levers": ("final", 2, {
        BASELINE: ASSIGNMENT_WAY,
        "in-memory + channels_last": Speed(),
        "+ torch.compile": Speed(compile=True),
        "+ bfloat16 autocast": Speed(amp=True),
        "+ compile + autocast": Speed(compile=True, amp=True),
        "+ CUDA graph": Speed(graph=True),
    }),
    "data-paths": ("assignment", 1, {
        BASELINE: ASSIGNMENT_WAY,
        "DataLoader + channels_last": Speed(data="dataloader", channels_last=True),
        "in-memory": Speed(data="memory", channels_last=False),
        "in-memory + channels_last": Speed(),
    }),
}


def timed_run(model: str, speed: Speed, epochs: int, device: torch.device, seed: int,
              smoke: bool = False) -> dict[str, float | list[float]]:
    """Train `model` with its recipe for `epochs` at `speed` (`smoke`: a smoke run, for a smoke check only); return
    wall time, epoch times and final accuracy."""
    recipe = get_recipe(model).with_overrides(epochs=epochs)
    if speed.compile:
        torch._dynamo.reset()  # each compiled run pays for its own compiling, as a fresh process would
    start = time.perf_counter()
    _, history = train_recipe(model, recipe, device=device, seed=seed, speed=speed, progress=False, smoke=smoke)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"wall": time.perf_counter() - start, "epochs": history.column("seconds"),
            "test_acc": history.epochs[-1]["test_acc"]}


def main() -> int:
    """Run every configuration of the mode `--repeats` times, alternating; print the table, write the file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=list(MODES), default="levers")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: 2 for levers, 1 for data-paths)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--configs", nargs="+", help="configurations to run (default: all that apply to the "
                        "device; the baseline always runs)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="results file (default mnist_lesson/evidence/speed_MODE_DEVICE.json)")
    parser.add_argument("--smoke-check", action="store_true", help="with MNIST_LESSON_SMOKE=1: smoke runs that check "
                        "this script's plumbing, into --json outside mnist_lesson/evidence/, marked smoke")
    args = parser.parse_args()
    smoke = refuse_smoke_mode("it would time a few batches, not epochs", args.smoke_check, args.json)
    model, default_epochs, configs = MODES[args.mode]
    epochs = args.epochs or default_epochs
    if epochs < 1 or args.repeats < 1:
        print("error: --epochs and --repeats must be at least 1", file=sys.stderr)
        return 2
    unknown = set(args.configs or ()) - set(configs)
    if unknown:
        print(f"error: unknown configuration(s) {sorted(unknown)}; mode {args.mode} has {list(configs)}",
              file=sys.stderr)
        return 2
    set_threads(args.threads)
    device = pick_device(args.device)
    amp_ok = native_bf16(device)
    names = [BASELINE] + [name for name, speed in configs.items() if name != BASELINE and (amp_ok or not speed.amp)
                          and (device.type == "cuda" or not speed.graph) and (not args.configs or name in args.configs)]
    print(f"device: {where(device)}; model {model}, {epochs} epoch(s) per run, {args.repeats} repeat(s)", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            run = timed_run(model, configs[name], epochs, device, seed=repeat, smoke=smoke)
            runs[name].append(run)
            print(f"  [{describe_device(device)}] {name:28s} run {run['wall']:6.1f} s  first epoch "
                  f"{run['epochs'][0]:5.1f} s  later epochs {steady_seconds(run['epochs']):5.1f} s  "
                  f"test acc {run['test_acc']:.2f}%", flush=True)
    data = {"device": where(device), "model": model, "mode": args.mode, "epochs": epochs, "baseline": BASELINE,
            "configs": {name: configs[name].to_dict() for name in names}, "runs": runs}
    if smoke:
        data["smoke"] = True
    print(f"\n{model} on {where(device)}: medians of {args.repeats} run(s) of {epochs} epoch(s)")
    print(f"  {'configuration':28s} {'run s':>7s} {'epoch s':>8s} {'vs baseline':>12s}")
    for row in summarize_speed(data).rows:
        print(f"  {row.config:28s} {row.wall:7.1f} {row.epoch:8.2f} {row.vs_baseline:11.2f}x")
    out = args.json or evidence(f"speed_{args.mode}_{device.type}.json")
    write_json(out, data)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
