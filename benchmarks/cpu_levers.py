"""The CPU levers for the notebook series, side by side in one run: threads, channels-last, bfloat16, the step's way.

    python benchmarks/cpu_levers.py [--model final] [--epochs 1] [--repeats 2] [--json FILE]

Every configuration trains the same model with its recipe for the same epochs on all 60,000 images, in this one
process, alternating, so that a busy moment of a shared machine falls on every configuration alike. What changes is
only how the run computes: torch's CPU threads (1, or every core), the memory layout (channels-last or not),
bfloat16 autocast (only where the CPU has it natively; measured not to keep the accuracy claim on every seed, so a
lever for quick experiments only), and the training step before issue 22 (benchmarks/dispatch_count.py's "before
(CPU)"). Each run is timed from building the loaders to its last evaluation. Writes
mnist_lesson/evidence/cpu_levers.json (or --json FILE) with the CPU named.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import refuse_smoke_mode, set_threads
from dispatch_count import the_way

from mnist_lesson.config import Speed
from mnist_lesson.device import cpu_name, native_bf16
from mnist_lesson.recipes import get_recipe
from mnist_lesson.records import evidence, write_json
from mnist_lesson.runs import train_recipe

CPU = torch.device("cpu")
CORES = os.cpu_count() or 1
# label -> (threads, speed, way of stepping); the first is the baseline: the package's default at one thread.
CONFIGS: dict[str, tuple[int, Speed, str]] = {
    "1 thread": (1, Speed(), "now"),
    f"{CORES} threads": (CORES, Speed(), "now"),
    f"{CORES} threads, no channels_last": (CORES, Speed(channels_last=False), "now"),
    f"{CORES} threads, step before issue 22": (CORES, Speed(), "before (CPU)"),
    f"{CORES} threads, bfloat16 autocast": (CORES, Speed(amp=True), "now"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="final")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=evidence("cpu_levers.json"))
    args = parser.parse_args()
    refuse_smoke_mode("it would time a few batches, not epochs")
    names = [name for name, (_, speed, _) in CONFIGS.items() if native_bf16(CPU) or not speed.amp]
    recipe = get_recipe(args.model).with_overrides(epochs=args.epochs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    accs: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            threads, speed, way = CONFIGS[name]
            set_threads(threads)
            start = time.perf_counter()
            with the_way(way):
                _, history = train_recipe(args.model, recipe, device=CPU, seed=repeat, speed=speed,
                                          progress=False, smoke=False)
            seconds[name].append(time.perf_counter() - start)
            accs[name].append(history.epochs[-1]["test_acc"])
            print(f"  {name:40s} {seconds[name][-1]:6.1f} s  test acc {accs[name][-1]:.2f}%", flush=True)
    device = f"cpu ({cpu_name()}, {CORES} cores), torch {torch.__version__}"
    base = statistics.median(seconds[names[0]])
    print(f"\n{args.model}, {args.epochs} epoch(s) a run, medians of {args.repeats}, on {device}")
    for name in names:
        median = statistics.median(seconds[name])
        print(f"  {name:40s} {median:6.1f} s  {median / base:5.2f}x the first")
    write_json(args.json, {"device": device, "torch": torch.__version__, "model": args.model, "epochs": args.epochs,
                           "configs": names, "seconds": seconds, "test_acc": accs})
    print(f"results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
