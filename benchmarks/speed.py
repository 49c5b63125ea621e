"""Benchmark: the speed ladder. The final model trained the seed's way and with each speed lever, side by side.

Every configuration runs in this one process, on the same device, alternating, with the final model and
its recipe (batch 64, rotation and shift, one-cycle). The baseline is the seed-style set-up: torchvision's
DataLoader with per-image RandomAffine, ToTensor and Normalize (2 workers), default memory layout, eager
float32. Then the package default (data and augmentation held on the device, channels-last layout), and
the package default with torch.compile, with bfloat16 mixed precision, and with both (the last two only
on devices that compute in bfloat16 natively: recent CUDA GPUs, CPUs with AVX512-BF16 or AMX).

    python benchmarks/speed.py [--epochs 2] [--repeats 2] [--device auto] [--configs NAME ...] [--json FILE]

Each run is timed from building the loaders (data loading included) to the last evaluation. The table
reports the whole run, its first epoch (which pays for compiling) and the median of its later epochs (the
steady speed), with the ratio of that steady epoch to the baseline's. `--epochs 15` times the full recipe,
as `python -m mnist_lesson train final` runs it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mnist_lesson.config import Speed
from mnist_lesson.models import get_model, get_recipe
from mnist_lesson.results import steady_seconds, write_json
from mnist_lesson.train import describe_device, native_bf16, pick_device, smoke_mode, train_recipe

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "final"
BASELINE = "seed-style DataLoader"

# name -> (data path, channels_last, Speed); the first is the baseline, the second the package default, and
# each "+" configuration adds its lever(s) to the package default.
CONFIGS: dict[str, tuple[str, bool, Speed]] = {
    BASELINE: ("dataloader", False, Speed()),
    "in-memory + channels_last": ("memory", True, Speed()),
    "+ torch.compile": ("memory", True, Speed(compile=True)),
    "+ bfloat16 autocast": ("memory", True, Speed(amp=True)),
    "+ compile + autocast": ("memory", True, Speed(compile=True, amp=True)),
}
AMP = {"+ bfloat16 autocast", "+ compile + autocast"}  # run only where the device has native bfloat16


def timed_run(name: str, epochs: int, device: torch.device, seed: int) -> dict[str, float | list[float]]:
    """Train the final model with configuration `name` for `epochs`; return wall time, epoch times, accuracy."""
    data, channels_last, speed = CONFIGS[name]
    recipe = get_recipe(MODEL).with_overrides(data=data, channels_last=channels_last, epochs=epochs)
    if speed.compile:
        torch._dynamo.reset()  # each compiled run pays for its own compiling, as a fresh process would
    start = time.perf_counter()
    _, history = train_recipe(lambda: get_model(MODEL), recipe, device=device, seed=seed, progress=False,
                              speed=speed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"wall": time.perf_counter() - start, "epochs": history.column("seconds"),
            "test_acc": history.epochs[-1].test_acc}


def main() -> int:
    """Run every configuration `--repeats` times, alternating; print the table and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (15 = the full recipe)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="configurations to run "
                        "(default: all that apply to the device; the baseline always runs)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/speed_DEVICE.json)")
    args = parser.parse_args()
    if smoke_mode():
        print("MNIST_LESSON_SMOKE is set: it would time a few batches, not epochs; unset it", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.repeats < 1:
        print("error: --epochs and --repeats must be at least 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp_ok = native_bf16(device)
    names = [n for n in CONFIGS if (amp_ok or n not in AMP) and (not args.configs or n in args.configs)]
    names = [BASELINE] + [n for n in names if n != BASELINE]
    where = f"{describe_device(device)}, {platform.machine()}, torch {torch.__version__}"
    print(f"device: {where}; model {MODEL}, {args.epochs} epoch(s) per run, {args.repeats} repeat(s)", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            run = timed_run(name, args.epochs, device, seed=repeat)
            runs[name].append(run)
            print(f"  [{describe_device(device)}] {name:28s} run {run['wall']:6.1f} s  first epoch "
                  f"{run['epochs'][0]:5.1f} s  later epochs {steady_seconds(run['epochs']):5.1f} s  "
                  f"test acc {run['test_acc']:.2f}%", flush=True)
    base = statistics.median(steady_seconds(run["epochs"]) for run in runs[BASELINE])
    print(f"\n{MODEL} on {where}: medians of {args.repeats} run(s) of {args.epochs} epoch(s)")
    print(f"  {'configuration':28s} {'run s':>7s} {'epoch s':>8s} {'vs baseline':>12s}")
    for name, values in runs.items():
        epoch = statistics.median(steady_seconds(run["epochs"]) for run in values)
        wall = statistics.median(run["wall"] for run in values)
        print(f"  {name:28s} {wall:7.1f} {epoch:8.2f} {epoch / base:11.2f}x")
    out = args.json or RESULTS / f"speed_{device.type}.json"
    write_json(out, {"device": where, "model": MODEL, "epochs": args.epochs, "baseline": BASELINE,
                     "configs": {n: {"data": CONFIGS[n][0], "channels_last": CONFIGS[n][1],
                                     **CONFIGS[n][2].to_dict()} for n in names},
                     "runs": runs})
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
