"""Results files: what a full training run measured, written once and read by notebooks, README and tests.

A step's notebook records its run with `record_run`; `benchmarks/seeds.py` records multi-seed runs.
Smoke runs are never recorded. Introduced in notebook 02.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_lesson.data import atomic_write
from mnist_lesson.train import History, smoke_mode

TARGET = 99.40  # percent test accuracy the course asks for
BUDGET = 20_000  # a model must have fewer parameters than this
LAST_EPOCHS = 3  # a claim holds only if every one of the last 3 epochs reaches the target


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` through a temporary file renamed into place."""
    atomic_write(Path(path), (json.dumps(data, indent=1) + "\n").encode())


def record_run(name: str, history: History, folder: Path) -> Path | None:
    """Write a full run's history to folder/NAME.json and return the path.

    Does nothing (returns None) in smoke mode, or when `folder` does not exist (a notebook opened in
    Colab has no checkout of the repository to record into).
    """
    if smoke_mode() or history.meta.get("smoke") or not Path(folder).is_dir():
        return None
    path = Path(folder) / f"{name}.json"
    write_json(path, {"model": name, **history.to_dict()})
    return path


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
    accs = [epoch["test_acc"] for epoch in data["epochs"]]
    seconds = [epoch["seconds"] for epoch in data["epochs"]]
    return RunSummary(data["model"], data["meta"]["params"], len(accs), max(accs), tuple(accs[-LAST_EPOCHS:]),
                      sum(seconds) / len(seconds), data["meta"]["device"])


# Public results quoted in the course guide (shared/guide/ANCHORS.md), each the best epoch on the test set:
# (label, parameters, test accuracy in percent).
PUBLIC_ANCHORS: tuple[tuple[str, int, float], ...] = (
    ("seed assignment (epoch 17 of 19)", 13_816, 99.45),
    ("snehanshu-raj/ERA", 7_918, 99.41),
    ("adilsammar/woolly-of-cv", 4_838, 99.42),
    ("adilsammar/woolly-of-cv", 3_762, 99.52),
)


def steps_table(summaries: list[RunSummary]) -> str:
    """Return a markdown table of recorded runs: parameters, final RF, best and last-3 accuracy, time, device."""
    from mnist_lesson.models import MODELS, get_model
    from mnist_lesson.receptive_field import layer_table

    rows = ["| model | parameters | RF | best test acc | last 3 epochs | epochs | s/epoch | device |",
            "|---|---:|---:|---:|---|---:|---:|---|"]
    for s in summaries:
        rf = layer_table(get_model(s.model)).final_rf if s.model in MODELS else "?"
        last = ", ".join(f"{a:.2f}" for a in s.last_accs)
        rows.append(f"| {s.model} | {s.params:,} | {rf} | {s.best_acc:.2f} | {last} | {s.epochs} "
                    f"| {s.seconds_per_epoch:.1f} | {s.device} |")
    return "\n".join(rows)


def step_summaries(folder: Path) -> list[RunSummary]:
    """Return the summaries of the runs recorded in `folder`, in the order the models are registered."""
    from mnist_lesson.models import MODELS

    paths = [Path(folder) / f"{name}.json" for name in MODELS]
    return [summarize(path) for path in paths if path.exists()]


def describe_result(history: History) -> str:
    """Return two lines: best and last-3 test accuracy, and the train/test gap of the last epoch."""
    accs = history.column("test_acc")
    last = history.epochs[-1]
    return (f"test accuracy: best {max(accs):.2f}%, last {LAST_EPOCHS} epochs "
            f"{', '.join(f'{a:.2f}' for a in accs[-LAST_EPOCHS:])}%\n"
            f"train minus test accuracy in the last epoch: {last.train_acc - last.test_acc:+.2f} points")


def seed_claim(data: dict[str, Any]) -> tuple[bool, list[str]]:
    """Return (whether every seed's last epochs all reach TARGET, one line per seed) for a multi-seed file."""
    lines, ok = [], True
    for run in data["runs"]:
        last = run["test_acc"][-LAST_EPOCHS:]
        passed = min(last) >= TARGET
        ok &= passed
        lines.append(f"seed {run['seed']}: last {LAST_EPOCHS} epochs {', '.join(f'{a:.2f}' for a in last)} "
                     f"-> {'all' if passed else 'NOT all'} >= {TARGET:.2f}% (best {max(run['test_acc']):.2f}, "
                     f"{run['seconds']:.0f} s on {run['device']})")
    return ok, lines


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
        """How many seeds have every one of their last epochs at TARGET or above."""
        return sum(low >= TARGET for low in self.seed_mins.values())

    @property
    def holds(self) -> bool:
        """Whether the course's claim holds: every last epoch of every seed reaches TARGET."""
        return self.passing == len(self.last_accs)


def seeds_label(data: dict[str, Any]) -> str:
    """Return a multi-seed file's model name plus the speed levers its runs used, e.g. "final (amp)"."""
    levers = [lever for lever in ("amp", "compile") if any(run.get("speed", {}).get(lever) for run in data["runs"])]
    return f"{data['model']} ({', '.join(levers)})" if levers else data["model"]


def summarize_seeds(path: Path) -> SeedsSummary:
    """Read a multi-seed results file written by benchmarks/seeds.py and return its summary."""
    data = json.loads(Path(path).read_text())
    runs = data["runs"]
    if not runs:
        raise ValueError(f"{path} holds no runs yet; run benchmarks/seeds.py --model {data['model']}")
    devices = sorted({run["device"] for run in runs})
    return SeedsSummary(seeds_label(data), data["params"], data["recipe"]["epochs"],
                        {run["seed"]: tuple(run["test_acc"][-LAST_EPOCHS:]) for run in runs}, ", ".join(devices))


def seeds_table(summaries: list[SeedsSummary]) -> str:
    """Return a markdown table of multi-seed results: seeds passing, worst and per-seed last-epoch minima."""
    rows = [f"| model | parameters | epochs | seeds with all last {LAST_EPOCHS} >= {TARGET:.2f} "
            f"| worst of the last {LAST_EPOCHS} | lowest of the last {LAST_EPOCHS}, per seed | device |",
            "|---|---:|---:|---:|---:|---|---|"]
    for s in summaries:
        per_seed = ", ".join(f"{low:.2f}" for _, low in sorted(s.seed_mins.items()))
        rows.append(f"| {s.model} | {s.params:,} | {s.epochs} | {s.passing} of {len(s.last_accs)} | {s.worst:.2f} "
                    f"| {per_seed} | {s.device} |")
    return "\n".join(rows)


def steady_seconds(epoch_seconds: list[float]) -> float:
    """Return the median epoch time after the first epoch, which pays for compiling and warm-up."""
    import statistics

    return statistics.median(epoch_seconds[1:] or epoch_seconds)


def trials_table(path: Path) -> str:
    """Return a markdown table of the single-seed trials in a JSON-lines file written by benchmarks/trials.py."""
    rows = ["| trial | parameters | architecture | recipe change | seed | last 3 epochs | train acc, last epoch |",
            "|---|---:|---|---|---:|---|---:|"]
    for line in Path(path).read_text().splitlines():
        trial = json.loads(line)
        spec = ", ".join(f"{key}={value}" for key, value in trial["spec"].items())
        change = ", ".join(f"{key}={value}" for key, value in trial["recipe_changes"].items()) or "none"
        last = ", ".join(f"{a:.2f}" for a in trial["test_acc"][-LAST_EPOCHS:])
        rows.append(f"| {trial['name']} | {trial['params']:,} | {trial['class']}({spec}) | {change} | {trial['seed']} "
                    f"| {last} | {trial['train_acc'][-1]:.2f} |")
    return "\n".join(rows)
