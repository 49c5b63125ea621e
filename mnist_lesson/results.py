"""Results files: what full runs measured, written once and read by notebooks, the README and tests.

They are the course's evidence and ship inside the package (`mnist_lesson/evidence/`), so a notebook
opened alone in Colab shows the same recorded figures as a checkout; `evidence()` is the one way to
find them. A step's notebook records its run with `record_run` (in a checkout only); the scripts in
`benchmarks/` record multi-seed runs. Smoke runs are never recorded. The one judge of the course's
claim is `claim_holds` (one run) and `SeedsSummary.holds` (every seed), both asking whether every one
of the last epochs reaches the target. Introduced in notebook 00.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mnist_lesson.config import CLAIM_SEEDS, LAST_EPOCHS, MAX_EPOCHS, TARGET, Recipe
from mnist_lesson.files import atomic_write
from mnist_lesson.models import RECIPES
from mnist_lesson.train import History


def evidence(*parts: str) -> Path:
    """Return the path of a recorded results file (or folder) shipped with the package, e.g. evidence("steps")."""
    return Path(str(resources.files("mnist_lesson").joinpath("evidence", *parts)))


def in_checkout() -> bool:
    """Return whether the package runs from a checkout of the repository (where full runs are recorded)."""
    from mnist_lesson.runs import code_version

    return code_version().startswith("git ")


def write_json(path: Path, data: Any) -> None:
    """Write `data` as strict JSON to `path` through a temporary file renamed into place."""
    atomic_write(Path(path), (json.dumps(data, indent=1, allow_nan=False) + "\n").encode())


def claim_holds(test_accs: Sequence[float]) -> bool:
    """Return whether one run meets the course's claim: at most MAX_EPOCHS epochs, and every one of its last
    LAST_EPOCHS reaches the target."""
    return LAST_EPOCHS <= len(test_accs) <= MAX_EPOCHS and min(test_accs[-LAST_EPOCHS:]) >= TARGET


def record_run(name: str, history: History, folder: Path | None = None) -> Path | None:
    """Write a full run's history to FOLDER/NAME.json (default: the evidence's steps/) and return the path.

    Does nothing (returns None) for a smoke run, or outside a checkout of the repository (a notebook opened
    alone in Colab keeps its own run to itself and leaves the recorded evidence as it was).
    """
    folder = evidence("steps") if folder is None else Path(folder)
    if history.meta.get("smoke", True) or not in_checkout() or not folder.is_dir():
        return None
    path = folder / f"{name}.json"
    write_json(path, {"model": name, **history.to_dict()})
    return path


def recorded_label(meta: Mapping[str, Any]) -> str:
    """Return how a recorded result is labelled in notebooks: "recorded on DEVICE, DATE, code VERSION"."""
    parts = [f"recorded on {meta.get('device', 'an unrecorded device')}"]
    parts += [str(meta[key]) if key == "date" else f"code {meta[key]}" for key in ("date", "code") if meta.get(key)]
    return ", ".join(parts)


@dataclass(frozen=True)
class RunSummary:
    """The figures a results table shows for one recorded run."""

    model: str
    params: int
    epochs: int
    best_acc: float
    last_accs: tuple[float, ...]  # the last LAST_EPOCHS test accuracies
    seconds_per_epoch: float
    device: str

    @property
    def last_min(self) -> float:
        """The lowest of the last epochs' test accuracies: the figure a claim rests on."""
        return min(self.last_accs)


def summarize(path: Path) -> RunSummary:
    """Read a results file written by `record_run` and return its summary."""
    data = json.loads(Path(path).read_text())
    history = History.from_dict(data)
    accs = history.column("test_acc")
    return RunSummary(data["model"], history.meta["params"], len(accs), max(accs), tuple(accs[-LAST_EPOCHS:]),
                      statistics.mean(history.column("seconds")), history.meta["device"])


def step_summaries(folder: Path) -> list[RunSummary]:
    """Return the summaries of the runs recorded in `folder`, in the order the models are registered."""
    from mnist_lesson.models import MODELS

    paths = [Path(folder) / f"{name}.json" for name in MODELS]
    return [summarize(path) for path in paths if path.exists()]


def describe_result(history: History) -> str:
    """Return a few lines: best and last test (and validation) accuracies, and the claim's verdict."""
    lines = []
    for name in ("val", "test"):
        if history.epochs and f"{name}_acc" in history.epochs[0]:
            accs = history.column(f"{name}_acc")
            last = ", ".join(f"{a:.2f}" for a in accs[-LAST_EPOCHS:])
            lines.append(f"{name} accuracy: best {max(accs):.2f}%, last {LAST_EPOCHS} epochs {last}%")
    last = history.epochs[-1]
    lines.append(f"train (running, train mode) minus test accuracy in the last epoch: "
                 f"{last['train_acc'] - last['test_acc']:+.2f} points")
    holds = claim_holds(history.column("test_acc"))
    lines.append(f"every one of the last {LAST_EPOCHS} epochs >= {TARGET:.2f}% on the test set: "
                 f"{'yes' if holds else 'no'}")
    return "\n".join(lines)


@dataclass(frozen=True)
class SeedsSummary:
    """A multi-seed results file (benchmarks/seeds.py) in figures: per seed, its last epochs' test accuracies."""

    model: str
    params: int
    epochs: int
    last_accs: dict[int, tuple[float, ...]]  # seed -> the last LAST_EPOCHS test accuracies
    device: str

    @property
    def seed_mins(self) -> dict[int, float]:
        """Per seed, the lowest of its last epochs: what the claim checks."""
        return {seed: min(accs) for seed, accs in self.last_accs.items()}

    @property
    def worst(self) -> float:
        """The lowest last-epoch accuracy over every seed."""
        return min(self.seed_mins.values())

    @property
    def passing(self) -> int:
        """How many seeds have every one of their last epochs at the target or above."""
        return sum(claim_holds(accs) for accs in self.last_accs.values())

    @property
    def holds(self) -> bool:
        """Whether every last epoch of every recorded seed reaches the target."""
        return self.passing == len(self.last_accs)

    @property
    def claimed(self) -> bool:
        """Whether the course claims it: it holds, and on every one of the claim's seeds (0-9)."""
        return self.holds and set(CLAIM_SEEDS) <= set(self.last_accs)

    @property
    def verdict(self) -> str:
        """The claim in words: holds on the claim's seeds, does not hold, or not yet run on all of them."""
        if not self.holds:
            return "does not hold"
        if self.claimed:
            return f"holds on {len(self.last_accs)} seeds"
        missing = len(set(CLAIM_SEEDS) - set(self.last_accs))
        return f"not claimed yet: {missing} of the {len(CLAIM_SEEDS)} seeds not run"

    def lines(self) -> list[str]:
        """Return one line per seed and a verdict line, as benchmarks/seeds.py and notebook 07 print them."""
        out = [f"seed {seed}: last {LAST_EPOCHS} epochs {', '.join(f'{a:.2f}' for a in accs)} -> "
               f"{'all' if claim_holds(accs) else 'NOT all'} >= {TARGET:.2f}%" for seed, accs in self.last_accs.items()]
        out.append(f"{self.model}: {self.params:,} parameters, {self.passing} of {len(self.last_accs)} seeds hold, "
                   f"worst epoch {self.worst:.2f}; the claim: {self.verdict}")
        return out


def recipe_changes(model: str, recorded: Mapping[str, Any]) -> list[str]:
    """Return the fields where a recorded recipe differs from the model's registered one, e.g. ["ema=0"] (none
    for a model that is not registered)."""
    return Recipe.from_dict(recorded).changes_from(RECIPES[model]) if model in RECIPES else []


def seeds_label(data: Mapping[str, Any]) -> str:
    """Return a multi-seed file's model name plus what sets it apart: the speed levers its runs used and any
    difference from the model's registered recipe, e.g. "final (amp)" or "under5k (recipe with ema=0)"."""
    parts = [lever for lever in ("amp", "compile") if any(run.get("speed", {}).get(lever) for run in data["runs"])]
    changes = recipe_changes(data["model"], data["recipe"])
    if changes:
        parts.append(f"recipe with {', '.join(changes)}")
    return f"{data['model']} ({', '.join(parts)})" if parts else data["model"]


def summarize_seeds(path: Path) -> SeedsSummary:
    """Read a multi-seed results file written by benchmarks/seeds.py and return its summary."""
    data = json.loads(Path(path).read_text())
    runs = sorted(data["runs"], key=lambda run: run["seed"])
    if not runs:
        raise ValueError(f"{path} holds no runs yet; run benchmarks/seeds.py --model {data['model']}")
    devices = sorted({run["device"] for run in runs})
    return SeedsSummary(seeds_label(data), data["params"], data["recipe"]["epochs"],
                        {run["seed"]: tuple(run["test_acc"][-LAST_EPOCHS:]) for run in runs}, ", ".join(devices))


def steady_seconds(epoch_seconds: Sequence[float]) -> float:
    """Return the median epoch time after the first epoch, which pays for compiling and warm-up."""
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


# Public results this course compares itself with, each one run's best epoch picked on the test set:
# (label, parameters, test accuracy in percent, where it is published).
PUBLIC_ANCHORS: tuple[tuple[str, int, float, str], ...] = (
    ("the assignment (epoch 17 of 19)", 13_816, 99.45, "the assignment's own training log"),
    ("snehanshu-raj/ERA", 7_918, 99.41, "https://github.com/snehanshu-raj/ERA (assignment_6/Readme.md)"),
    ("adilsammar/woolly-of-cv", 4_838, 99.42,
     "https://github.com/adilsammar/woolly-of-cv (assets/mnist/docs/MNIST.md)"),
    ("adilsammar/woolly-of-cv", 3_762, 99.52,
     "https://github.com/adilsammar/woolly-of-cv (assets/mnist/notebook/MNIST_ALBUMENTATION_3762_99.52.ipynb)"),
)
