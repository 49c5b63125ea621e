"""Multi-seed verification: train a registered model with its recipe for several seeds, record every epoch.

    python benchmarks/seeds.py [--model final] [--seeds 0 1 ... 9] [--threads 1] [--device auto]
                                [--amp] [--compile] [--graph]

Writes mnist_lesson/evidence/seeds_MODEL.json (per seed: per-epoch test and train accuracy and seconds, the
device and the code's version; plus parameter count and recipe) after every seed, so an interrupted run keeps
what it finished and a rerun skips the seeds already there. Models train on all 60,000 training images. The
claim checked is the course's: every one of the last 3 epochs of every seed (0-9 by default) reaches 99.40%
test accuracy. No epoch is picked by its test accuracy; the recipe was chosen on the validation split. With --amp,
--compile or --graph (speed levers that must keep the accuracy) the default file name says so: seeds_final_amp.json.
With MNIST_LESSON_SMOKE=1 it refuses to run, unless `--smoke-check --out FILE` (FILE outside mnist_lesson/evidence/)
asks for a check of its plumbing: smoke runs, a file marked `"smoke": true`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from common import locked, refuse_smoke_mode, set_threads

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import Recipe, Speed
from mnist_lesson.device import pick_device
from mnist_lesson.models import get_model
from mnist_lesson.recipes import get_recipe
from mnist_lesson.records import read_json, seeds_path, summarize_seeds, write_json
from mnist_lesson.runs import train_recipe


@contextmanager
def results_file(path: Path, fresh: dict) -> Iterator[dict]:
    """Yield the results file's contents (or `fresh`) while holding a lock, so parallel runs never clash."""
    with locked(path):
        yield read_json(path, dict(fresh))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="final")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (at most 15 for a claim)")
    parser.add_argument("--out", type=Path, help="results file (default mnist_lesson/evidence/seeds_MODEL.json)")
    parser.add_argument("--threads", type=int, help="CPU threads for this process (e.g. 1 to run two side by side)")
    parser.add_argument("--amp", action="store_true", help="train with bfloat16 autocast (native bfloat16 only)")
    parser.add_argument("--compile", action="store_true", help="train a torch.compile'd model")
    parser.add_argument("--graph", action="store_true", help="replay each training step from a CUDA graph (CUDA only)")
    parser.add_argument("--smoke-check", action="store_true", help="with MNIST_LESSON_SMOKE=1: smoke runs that check "
                        "this script's plumbing, into --out outside mnist_lesson/evidence/, marked smoke")
    args = parser.parse_args()
    smoke = refuse_smoke_mode("smoke runs are never recorded", args.smoke_check, args.out)
    speed = Speed(amp=args.amp, compile=args.compile, graph=args.graph)
    suffix = "".join(f"_{lever}" for lever in ("amp", "compile", "graph") if getattr(speed, lever))
    out = args.out or seeds_path(f"{args.model}{suffix}")
    recipe = get_recipe(args.model).with_overrides(epochs=args.epochs)
    set_threads(args.threads)
    device = pick_device(args.device)
    fresh = {"model": args.model, "runs": [], "params": count_parameters(get_model(args.model)),
             "recipe": recipe.to_dict(), "torch": torch.__version__, **({"smoke": True} if smoke else {})}
    with results_file(out, fresh) as data:
        if not recipe.matches(data["recipe"]):
            print(f"{out} holds runs of another recipe ({Recipe.from_dict(data['recipe'])}); move it away or pass "
                  "--out", file=sys.stderr)
            return 2
    for seed in args.seeds:
        with results_file(out, fresh) as data:
            if seed in {run["seed"] for run in data["runs"]}:
                print(f"seed {seed}: already in {out}, skipped")
                continue
        start = time.perf_counter()
        _, history = train_recipe(args.model, recipe, device=device, seed=seed, speed=speed, smoke=smoke)
        meta = history.meta
        run = {"seed": seed, "device": meta["device"], "seconds": time.perf_counter() - start, "speed": meta["speed"],
               "code": meta["code"], "date": meta["date"], "test_acc": history.column("test_acc"),
               "train_acc": history.column("train_acc"), "test_loss": history.column("test_loss")}
        with results_file(out, fresh) as data:  # re-read: another process may have added seeds meanwhile
            data["runs"] = sorted([r for r in data["runs"] if r["seed"] != seed] + [run], key=lambda r: r["seed"])
            write_json(out, data)
    print(f"results in {out}")
    print("\n".join(summarize_seeds(out).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
