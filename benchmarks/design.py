"""Design studies: train every design of a study for several seeds on the validation split, record every run.

    python benchmarks/design.py STUDY [--seeds 0 1 2] [--only KEY ...] [--threads 1] [--device cpu]

STUDY is one of mnist_lesson.studies.STUDIES ("steps", "ablation", ...). Each run trains on the first
50,000 training images and records, per epoch, validation (the last 10,000), test and train-subset
figures; it is appended to mnist_lesson/evidence/design_runs.jsonl as soon as it ends, so an interrupted
study keeps what it finished, and a rerun skips the (design, seed, threads) runs already there (a design
shared by two studies runs once). Two
processes with one thread each share a 2-core CPU (split the designs with --only). Choices are made on
the validation figures; the test figures are recorded beside them and never used to choose.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import locked, refuse_smoke_mode, set_threads

from mnist_lesson.device import pick_device
from mnist_lesson.records import DESIGN_RUNS, append_design_run, evidence, read_design_runs, run_matches
from mnist_lesson.runs import train_recipe
from mnist_lesson.studies import STUDIES


def main() -> int:
    """Run the missing (design, seed) pairs of a study, appending each finished run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="design keys to run (default: every design of the study)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for this process (default 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    refuse_smoke_mode("design runs are never recorded in smoke mode")
    designs = [d for d in STUDIES[args.study] if not args.only or d.key in args.only]
    if args.only and len(designs) != len(set(args.only)):
        print(f"error: unknown design(s) in {args.only}; {args.study} has {[d.key for d in STUDIES[args.study]]}",
              file=sys.stderr)
        return 2
    set_threads(args.threads)
    device = pick_device(args.device)
    path = evidence(DESIGN_RUNS)
    for design in designs:
        for seed in args.seeds:
            done = {(r["key"], r["seed"], r["threads"]) for r in read_design_runs(path) if run_matches(design, r)}
            if (design.key, seed, torch.get_num_threads()) in done:
                print(f"{design.key} seed {seed}: already recorded, skipped", flush=True)
                continue
            print(f"{design.key} seed {seed}: training ({design.label})", flush=True)
            start = time.perf_counter()
            _, history = train_recipe(design.build, design.recipe, device=device, seed=seed, validation=True,
                                      progress=False, smoke=False)
            meta = history.meta
            record = {"key": design.key, "label": design.label, "seed": seed,
                      "threads": torch.get_num_threads(), "params": meta["params"], "recipe": meta["recipe"],
                      "device": meta["device"], "code": meta["code"], "date": meta["date"],
                      "seconds": time.perf_counter() - start, "epochs": history.epochs}
            with locked(path):  # two processes may append to one study
                append_design_run(record, path)
            last = history.epochs[-1]
            print(f"  {record['seconds']:.0f} s: val {last['val_acc']:.2f}%, test {last['test_acc']:.2f}% "
                  "(last epoch)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
