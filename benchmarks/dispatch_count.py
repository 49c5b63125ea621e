"""Count the operations a training step dispatches, per registered recipe: the step as it was and as it is now.

    python benchmarks/dispatch_count.py [--steps 33] [--json FILE] [--time-epochs N --repeats N --threads N]

On a GPU each dispatched operation is a kernel launch the host has to make, and a step of the final model was
measured host-bound on an H200 (docs/performance.md); so fewer operations a step is the way to a faster GPU run,
and counting them needs no GPU. A TorchDispatchMode counts every aten operation (forward, backward, optimizer,
schedule, weight average, and the data: gathering, augmenting and normalizing) during a short run of each recipe
on the CPU, between its first and last optimizer step, so set-up and evaluation are left out. Two ways side by side:
"before" is the step before issue 22 (images gathered and augmented one batch at a time; SGD one call per
parameter on a CPU, "before (CPU)", and foreach on a GPU, where torch already chose it, "before (GPU)"); "now" is
the package now (a chunk of whole batches at a time, loaders.CHUNK_IMAGES, and foreach SGD everywhere). All give
the same numbers bit for bit on the CPU (tests/test_loaders.py, tests/test_recipes.py).
Writes mnist_lesson/evidence/dispatch_counts.json (or --json FILE); the count does not depend on the CPU, but the
file names it with the torch version, which it does depend on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from common import refuse_smoke_mode, set_threads, where
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_lesson import loaders, runs
from mnist_lesson.config import Limits
from mnist_lesson.recipes import RECIPES, make_optimizer
from mnist_lesson.records import evidence, write_json

CPU = torch.device("cpu")
# The step before issue 22 on a CPU; the same on a GPU (where torch's SGD already chose foreach); the step now.
WAYS = ("before (CPU)", "before (GPU)", "now")


class Counter(TorchDispatchMode):
    """Counts every aten operation dispatched while it is active, and notes the count at each optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.at_steps: list[int] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def the_way(way: str) -> Iterator[None]:
    """Run the package as it is ("now"), or as the step was before: one batch per chunk, and SGD one call per
    parameter as torch chose on a CPU ("before (CPU)") or foreach as it chose on a GPU ("before (GPU)")."""
    if way == "now":
        yield
        return
    with mock.patch.object(loaders, "CHUNK_IMAGES", 1), \
            mock.patch.object(runs, "make_optimizer", partial(make_optimizer, foreach=way == "before (GPU)")):
        yield


def ops_per_step(name: str, way: str, steps: int) -> float:
    """Return the mean number of operations between consecutive optimizer steps in a `steps`-batch run of `name`."""
    counter = Counter()
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: counter.at_steps.append(counter.count))
    try:
        with the_way(way), mock.patch.object(runs, "limits_for", lambda smoke: Limits(1, steps, 1)), counter:
            runs.train_recipe(name, device=CPU, progress=False, smoke=False)
    finally:
        hook.remove()
    first, last = counter.at_steps[0], counter.at_steps[-1]
    return (last - first) / (len(counter.at_steps) - 1)


def time_ways(model: str, epochs: int, repeats: int) -> dict[str, list[float]]:
    """Return, per way, the wall seconds of each full-data run of `model` for `epochs` epochs, the ways alternating."""
    seconds: dict[str, list[float]] = {way: [] for way in WAYS if way != "before (GPU)"}
    recipe = RECIPES[model].with_overrides(epochs=epochs)
    for repeat in range(repeats):
        for way in seconds:
            start = time.perf_counter()
            with the_way(way):
                runs.train_recipe(model, recipe, device=CPU, seed=repeat, progress=False, smoke=False)
            seconds[way].append(time.perf_counter() - start)
            print(f"  {model} {way}: {seconds[way][-1]:.1f} s for {epochs} epoch(s)", flush=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=33, help="batches per run (33: two chunks of batch 64 counted)")
    parser.add_argument("--json", type=Path, default=evidence("dispatch_counts.json"))
    parser.add_argument("--time-epochs", type=int, default=0, help="also time this many epochs of `final` each way "
                        "on the CPU, alternating (--repeats times): whether the fewer operations matter there")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    refuse_smoke_mode("the count is taken over real batches of a run")
    set_threads(args.threads)
    counts = {name: {way: ops_per_step(name, way, args.steps) for way in WAYS} for name in RECIPES}
    print(f"device: {where(CPU)}; operations dispatched per training step, mean over steps 2-{args.steps}")
    print(f"{'recipe':<12}" + "".join(f"{way:>14}" for way in WAYS))
    for name, row in counts.items():
        print(f"{name:<12}" + "".join(f"{row[way]:>14.1f}" for way in WAYS))
    timed = time_ways("final", args.time_epochs, args.repeats) if args.time_epochs else {}
    for way, runs_s in timed.items():
        print(f"final, {args.time_epochs} epoch(s), {way}: median {statistics.median(runs_s):.1f} s over "
              f"{len(runs_s)} run(s) on {where(CPU)}")
    write_json(args.json, {"device": where(CPU), "torch": torch.__version__, "steps": args.steps, "ways": list(WAYS),
                           "counts": counts, "timed": {"model": "final", "epochs": args.time_epochs,
                                                       "seconds": timed} if timed else None})
    print(f"results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
