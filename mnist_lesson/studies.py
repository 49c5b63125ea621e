"""Design studies: designs (a model and its recipe) compared over several seeds on the validation split.

Every design choice of the course is judged here, on the last 10,000 training images, never on the test
set: `benchmarks/design.py STUDY` trains each design of a study for several seeds and appends every run
to `evidence/design_runs.jsonl` (a design that appears in two studies is run once); `summarize_study`
turns the runs into one figure per design (validation accuracy, mean of the last 3 epochs, per seed) and
`compare` says whether a difference is larger than the seed-to-seed noise. Only runs whose recorded recipe
and parameter count match the design count. Introduced in notebook 02; notebook 07's ablation is the study
"ablation".
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import LAST_EPOCHS, Augment, Recipe
from mnist_lesson.models import FINAL_RECIPE, LADDER_RECIPE, MODELS, RECIPES, STEP_RECIPE, AssignmentNet, StepNet
from mnist_lesson.results import evidence
from mnist_lesson.train import History

STANDARD_THREADS = 1  # studies run one torch thread per process (two processes share the 2-core CPU)


@dataclass(frozen=True)
class Design:
    """One design to compare: how to build the model, the recipe it trains with, and what it changes."""

    key: str  # names the design in the results file; the same key in two studies is the same design
    label: str  # what a reader sees, e.g. "+ augmentation"
    build: Callable[[], nn.Module]
    recipe: Recipe


def registered(name: str, label: str) -> Design:
    """Return the design of a registered model with its own recipe."""
    return Design(name, label, MODELS[name], RECIPES[name])


_BASE = dict(squeeze=True, batch_norm=True, gap=True)  # notebook 06's network, without its dropout rate
_WIDER_WITH_HEAD = partial(StepNet, **_BASE, dropout=0.1, width=24, head_width=32)  # the final layout, dropout 0.1
_AUGMENT = Augment(rotation=7.0, shift=0.1)
_ONECYCLE = dict(lr=0.1, nesterov=True, schedule="onecycle")

# From notebook 06's network and recipe to the final model, one change at a time, and two controls.
ABLATION: tuple[Design, ...] = (
    registered("gap", "06: global average pooling (step recipe)"),
    Design("width24", "+ 24 features before the pool", partial(StepNet, **_BASE, dropout=0.1, width=24), STEP_RECIPE),
    Design("head32", "+ a 32-wide 1x1 layer after the pool", _WIDER_WITH_HEAD, STEP_RECIPE),
    Design("augment", "+ augmentation (rotate up to 7 degrees, shift up to 10%)", _WIDER_WITH_HEAD,
           STEP_RECIPE.with_overrides(augment=_AUGMENT)),
    Design("onecycle", "+ one-cycle schedule to lr 0.1, Nesterov momentum", _WIDER_WITH_HEAD,
           STEP_RECIPE.with_overrides(augment=_AUGMENT, **_ONECYCLE)),
    Design("batch64", "+ batches of 64 instead of 128", _WIDER_WITH_HEAD,
           STEP_RECIPE.with_overrides(augment=_AUGMENT, **_ONECYCLE, batch_size=64)),
    Design("epochs15", "+ 15 epochs instead of 8", _WIDER_WITH_HEAD,
           STEP_RECIPE.with_overrides(augment=_AUGMENT, **_ONECYCLE, batch_size=64, epochs=15)),
    registered("final", "+ dropout 0.05 instead of 0.1: the final model"),
    Design("assignment-final-recipe", "control: the assignment's model with the final recipe", AssignmentNet,
           FINAL_RECIPE),
    Design("gap-final-recipe", "control: notebook 06's model with the final recipe", MODELS["gap"], FINAL_RECIPE),
)

# Notebook 08: levers for the ladder's rungs that fell short on their test seeds with the ladder recipe, one
# change at a time on top of the last; each rung is registered with the recipe its study chooses (`best_design`).
# The first lever of both: evaluate an exponential moving average of the weights instead of the weights.
_EMA = LADDER_RECIPE.with_overrides(ema=0.999)
_EMA_LABEL = "+ evaluate a moving average of the weights (decay 0.999)"

# under5k fell short on 2 of 10 seeds: the average, then lighter shifts for a model this small.
LADDER5K_LEVERS: tuple[Design, ...] = (
    Design("under5k", "under5k with the ladder recipe (batch 32)", MODELS["under5k"], LADDER_RECIPE),
    Design("under5k-ema", _EMA_LABEL, MODELS["under5k"], _EMA),
    Design("under5k-ema-shift5", "+ shifts of up to 5% instead of 10%", MODELS["under5k"],
           _EMA.with_overrides(augment=Augment(rotation=7.0, shift=0.05))),
)

# under8k fell short on 1 of 10 seeds, in one epoch of its last 3 (seed 7: 99.38, then 99.50 twice): the average
# alone; the lighter shifts were a lever for the smaller model and are not tried here.
LADDER8K_LEVERS: tuple[Design, ...] = (
    Design("under8k", "under8k with the ladder recipe (batch 32)", MODELS["under8k"], LADDER_RECIPE),
    Design("under8k-ema", _EMA_LABEL, MODELS["under8k"], _EMA),
)

STUDIES: dict[str, tuple[Design, ...]] = {
    # Steps 02-06 of the series, each with its own recipe: what each idea changes.
    "steps": tuple(registered(name, label) for name, label in [
        ("skeleton", "02: receptive-field skeleton"), ("transitions", "03: + 1x1 transitions"),
        ("batchnorm", "04: + batch normalization"), ("dropout", "05: + dropout"),
        ("gap", "06: + global average pooling")]),
    "ablation": ABLATION,
    "ladder5k": LADDER5K_LEVERS,
    "ladder8k": LADDER8K_LEVERS,
}

# The ladder's rungs whose recipe a lever study chose: rung -> study.
LEVER_STUDIES: dict[str, str] = {"under5k": "ladder5k", "under8k": "ladder8k"}


def get_design(study: str, key: str) -> Design:
    """Return the design of `study` with this key."""
    if study not in STUDIES:
        raise KeyError(f"unknown study {study!r}; the studies are {sorted(STUDIES)}")
    for design in STUDIES[study]:
        if design.key == key:
            return design
    raise KeyError(f"study {study!r} has no design {key!r}; its designs are {[d.key for d in STUDIES[study]]}")


RUNS_FILE = "design_runs.jsonl"


def read_runs(path: Path | None = None) -> list[dict[str, Any]]:
    """Return every recorded design run (an empty list when nothing is recorded)."""
    path = evidence(RUNS_FILE) if path is None else path
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def matches(design: Design, run: dict[str, Any]) -> bool:
    """Return whether a recorded run was made with this design: same recipe (tolerantly) and parameter count."""
    return design.recipe.matches(run["recipe"]) and run["params"] == count_parameters(design.build())


def run_figure(run: dict[str, Any], key: str = "val_acc") -> float:
    """Return a run's figure: the mean of its last epochs' validation accuracy (less jumpy than one epoch)."""
    return statistics.mean(epoch[key] for epoch in run["epochs"][-LAST_EPOCHS:])


@dataclass(frozen=True)
class DesignSummary:
    """One design of a study in figures: per seed, the mean validation accuracy of its last epochs."""

    key: str
    label: str
    params: int
    figures: dict[int, float]  # seed -> validation accuracy, mean of the last LAST_EPOCHS epochs
    test_figures: dict[int, float]  # the same for the test set, shown but never used to choose

    @property
    def mean(self) -> float:
        """The mean over seeds."""
        return statistics.mean(self.figures.values())

    @property
    def low(self) -> float:
        """The worst seed."""
        return min(self.figures.values())

    @property
    def high(self) -> float:
        """The best seed."""
        return max(self.figures.values())

    @property
    def seeds(self) -> int:
        """How many seeds were run."""
        return len(self.figures)


def summarize_study(study: str, runs: Sequence[dict[str, Any]] | None = None,
                    threads: int = STANDARD_THREADS) -> list[DesignSummary]:
    """Return one summary per design of `study` that has runs, in the study's order (runs at `threads` only)."""
    runs = read_runs() if runs is None else runs
    summaries = []
    for design in STUDIES[study]:
        mine = sorted((r for r in runs if r["key"] == design.key and r["threads"] == threads and matches(design, r)),
                      key=lambda r: r["seed"])
        if mine:
            summaries.append(DesignSummary(design.key, design.label, mine[0]["params"],
                                           {r["seed"]: run_figure(r) for r in mine},
                                           {r["seed"]: run_figure(r, "test_acc") for r in mine}))
    return summaries


def compare(before: DesignSummary, after: DesignSummary) -> str:
    """Return how `after` differs from `before` on validation, and whether that is larger than the seed noise.

    The rule is deliberately plain: a difference counts only when every seed of one design beats every
    seed of the other (the ranges do not overlap); otherwise it is within the noise.
    """
    delta = after.mean - before.mean
    clear = after.low > before.high or after.high < before.low
    verdict = ("larger than the seed-to-seed noise" if clear
               else "within the seed-to-seed noise (no measurable difference)")
    return (f"{delta:+.2f} points ({before.mean:.2f} -> {after.mean:.2f}, mean of {after.seeds} seeds; ranges "
            f"{before.low:.2f}-{before.high:.2f} and {after.low:.2f}-{after.high:.2f}): {verdict}")


def best_design(summaries: Sequence[DesignSummary]) -> DesignSummary:
    """Return the design a study chooses: the highest mean validation figure (test figures play no part)."""
    if not summaries:
        raise ValueError("no design has recorded runs yet: run benchmarks/design.py STUDY first")
    return max(summaries, key=lambda s: s.mean)


def design_histories(key: str, runs: Sequence[dict[str, Any]] | None = None,
                     threads: int = STANDARD_THREADS) -> dict[int, History]:
    """Return the recorded runs of one design as Histories, by seed."""
    runs = read_runs() if runs is None else runs
    return {run["seed"]: History([dict(e) for e in run["epochs"]], {"device": run["device"], "code": run["code"],
                                                                    "date": run["date"], "params": run["params"]})
            for run in sorted(runs, key=lambda r: r["seed"]) if run["key"] == key and run["threads"] == threads}


@dataclass(frozen=True)
class Noise:
    """How much a design's figure moves when nothing about the design changes."""

    seed_spread: float  # median over designs of (best seed - worst seed), validation, mean of the last epochs
    seeds: int  # seeds per design (the most any design has)
    designs: int  # designs with at least two seeds
    thread_delta: float | None  # |1 thread - 2 threads| for the same design and seed, largest seen; None if unmeasured
    thread_pairs: int  # how many same-seed pairs measured it


def measure_noise(runs: Sequence[dict[str, Any]] | None = None) -> Noise:
    """Return the run-to-run noise of the recorded design runs: across seeds, and across thread counts."""
    runs = read_runs() if runs is None else runs
    by_design: dict[str, dict[int, float]] = {}
    for run in runs:
        if run["threads"] == STANDARD_THREADS:
            by_design.setdefault(run["key"], {})[run["seed"]] = run_figure(run)
    spreads = [max(f.values()) - min(f.values()) for f in by_design.values() if len(f) >= 2]
    deltas = [abs(run_figure(run) - by_design[run["key"]][run["seed"]]) for run in runs
              if run["threads"] != STANDARD_THREADS and run["seed"] in by_design.get(run["key"], {})]
    counts = [len(f) for f in by_design.values() if len(f) >= 2]
    return Noise(statistics.median(spreads) if spreads else float("nan"), max(counts, default=0), len(counts),
                 max(deltas) if deltas else None, len(deltas))


def describe_noise(noise: Noise) -> str:
    """Return the sentence that states the noise every comparison is measured against."""
    text = (f"Run-to-run noise: with nothing changed but the seed, a design's validation figure (mean of its last "
            f"{LAST_EPOCHS} epochs) moves by {noise.seed_spread:.2f} points between its best and worst of "
            f"{noise.seeds} seeds (median over the {noise.designs} designs measured).")
    if noise.thread_delta is not None:
        text += (f" The same seed trained with 2 CPU threads instead of 1 (the same numbers added in another "
                 f"order) moved it by up to {noise.thread_delta:.2f} points ({noise.thread_pairs} pair(s) measured).")
    return text
