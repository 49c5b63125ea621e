"""Ladder trials on the validation split: one architecture, one recipe change, one seed per call.

    python benchmarks/trials.py NAME CLASS SPEC [--recipe JSON] [--seed 0] [--threads 1]
    python benchmarks/trials.py b32 LadderNet '{"block1": [8, 10, 12], "squeeze": 8, "block2": [10, 10, 12]}' \
        --recipe '{"batch_size": 32}'

CLASS is LadderNet or PyramidNet from mnist_lesson.models, SPEC its keyword arguments as JSON, and --recipe
changes fields of the final model's recipe (augmentation as a whole: '{"augment": {"rotation": 7, "shift": 0.05}}').
Each trial trains on the first 50,000 training images and appends one line (per epoch: validation, test and
training figures) to mnist_lesson/evidence/ladder_trials.jsonl. Trials are judged on validation accuracy only;
the test figures are recorded beside them and never used to choose. Only benchmarks/seeds.py (several seeds,
last three epochs, all 60,000 training images) makes a claim. The first trials of the ladder, judged on the test
set, are kept apart in mnist_lesson/evidence/legacy/ladder_trials_test_judged.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import RESULTS, refuse_smoke_mode, set_threads

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import Recipe
from mnist_lesson.models import FINAL_RECIPE, LadderNet, PyramidNet
from mnist_lesson.runs import describe_device, pick_device, train_recipe

CLASSES = {"LadderNet": LadderNet, "PyramidNet": PyramidNet}


def main() -> int:
    """Train one trial and append its record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a short label for the trial")
    parser.add_argument("cls", choices=sorted(CLASSES))
    parser.add_argument("spec", type=json.loads, help="the class's keyword arguments as JSON")
    parser.add_argument("--recipe", type=json.loads, default={}, help="changes to the final recipe, as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "ladder_trials.jsonl")
    args = parser.parse_args()
    refuse_smoke_mode("trials are never recorded in smoke mode")
    set_threads(args.threads)
    spec = {key: tuple(map(tuple, value)) if key == "stages" else value for key, value in args.spec.items()}

    def build() -> torch.nn.Module:
        return CLASSES[args.cls](**spec)

    recipe = Recipe.from_dict({**FINAL_RECIPE.to_dict(), **args.recipe})
    device = pick_device("cpu")
    _, history = train_recipe(build, recipe, device=device, seed=args.seed, progress=False, smoke=False,
                              validation=True)
    record = {"name": args.name, "class": args.cls, "spec": args.spec, "recipe_changes": args.recipe,
              "seed": args.seed, "params": count_parameters(build()), "device": describe_device(device),
              "code": history.meta["code"], "date": history.meta["date"], "judged_on": "val",
              "val_acc": history.column("val_acc"), "test_acc": history.column("test_acc"),
              "train_acc": history.column("train_acc"), "seconds": history.column("seconds")}
    with open(args.out, "a") as out:
        out.write(json.dumps(record) + "\n")
    print(f"{args.name}: {record['params']:,} parameters, validation accuracy in the last 3 epochs "
          f"{', '.join(f'{a:.2f}' for a in record['val_acc'][-3:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
