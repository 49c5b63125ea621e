"""The recorded evidence: every file under `mnist_lesson/evidence/`, where it lies, how it is read and written,
and the summaries that notebooks, tables and the README show. No other module of the package and no benchmark
parses these files.

The files ship inside the package, so a notebook opened alone in Colab shows the same recorded figures as a
checkout. One section per format:

- steps/NAME.json: a step's full run, written by its notebook (`record_run`; `step_summaries`);
- seeds_NAME.json: a registered model over several seeds (benchmarks/seeds.py; `read_seeds`, `summarize_seeds`);
- design_runs.jsonl: one line per design run of a study (benchmarks/design.py; `read_design_runs`,
  `summarize_study`, `measure_noise`);
- legacy/ladder_trials_test_judged.jsonl: the ladder's first single-seed trials (`read_trials`);
- notebook_times.json, grading_times.json, speed_*.json: what the benchmarks timed (`read_notebook_times`,
  `read_grading_times`, `read_speed`);
- cpu_levers.json: the CPU levers timed side by side (benchmarks/cpu_levers.py; `read_cpu_levers`);
- dispatch_counts.json: operations a training step dispatches, per recipe (benchmarks/dispatch_count.py;
  `read_dispatch_counts`);
- gpu_check_*.json: benchmarks/gpu_check.sh's reports from a GPU machine (`read_gpu_check`); the seeds it ran there
  are seeds files of their own (seeds_final_cuda.json).

Smoke runs are never recorded. The one judge of the course's claim is `claim_holds` (one run) and
`SeedsSummary.holds` (every seed), both asking whether every one of the last epochs reaches the target.
Introduced in notebook 00; the design studies in notebook 02.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import CLAIM_SEEDS, LAST_EPOCHS, MAX_EPOCHS, TARGET, Recipe
from mnist_lesson.files import atomic_write, code_version
from mnist_lesson.models import MODELS
from mnist_lesson.recipes import RECIPES
from mnist_lesson.studies import STANDARD_THREADS, STUDIES, UNFINISHED_STUDIES, Design, DesignSummary
from mnist_lesson.train import History

# --- where the files are, and reading and writing JSON ------------------------------------------------------

STEPS = "steps"
DESIGN_RUNS = "design_runs.jsonl"
LEGACY_TRIALS = "legacy/ladder_trials_test_judged.jsonl"
NOTEBOOK_TIMES = "notebook_times.json"
GRADING_TIMES = "grading_times.json"


def evidence(*parts: str) -> Path:
    """Return the path of a recorded file (or folder) shipped with the package, e.g. evidence("steps")."""
    return Path(str(resources.files("mnist_lesson").joinpath("evidence", *parts)))


def shown_path(path: Path | None, missing: str = "nothing (smoke mode, or no checkout of the repository)") -> str:
    """Return `path` as notebooks print it: from the package's folder on (mnist_lesson/evidence/...), never the
    recording machine's absolute path; `missing` when there is no path."""
    if path is None:
        return missing
    base = evidence().parent.parent
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def seeds_path(name: str) -> Path:
    """Return the path of a multi-seed file, e.g. seeds_path("final") or seeds_path("final_amp")."""
    return evidence(f"seeds_{name}.json")


def seeds_paths() -> list[Path]:
    """Return every multi-seed file, in name order."""
    return sorted(evidence().glob("seeds_*.json"))


def speed_paths() -> list[Path]:
    """Return every speed benchmark file, in name order."""
    return sorted(evidence().glob("speed_*.json"))


def in_checkout() -> bool:
    """Return whether the package runs from a checkout of the repository (where full runs are recorded)."""
    return code_version().startswith("git ")


def read_json(path: Path, default: Any = None) -> Any:
    """Return the contents of the JSON file at `path`, or `default` when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, data: Any) -> None:
    """Write `data` as strict JSON to `path` through a temporary file renamed into place."""
    atomic_write(Path(path), (json.dumps(data, indent=1, allow_nan=False) + "\n").encode())


def read_jsonl(path: Path) -> list[Any]:
    """Return one value per non-empty line of the JSON-lines file at `path` (none when there is no such file)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_jsonl(path: Path, record: Any) -> None:
    """Append `record` as one line of strict JSON to `path` (the caller holds any lock two writers need)."""
    with open(path, "a") as out:
        out.write(json.dumps(record, allow_nan=False) + "\n")


# --- the claim, and one run -------------------------------------------------------------------------------


def claim_holds(test_accs: Sequence[float]) -> bool:
    """Return whether one run meets the course's claim: at most MAX_EPOCHS epochs, and every one of its last
    LAST_EPOCHS reaches the target."""
    return LAST_EPOCHS <= len(test_accs) <= MAX_EPOCHS and min(test_accs[-LAST_EPOCHS:]) >= TARGET


def describe_result(history: History) -> str:
    """Return a few lines: best and last test (and validation) accuracies, and the claim's verdict."""
    lines = []
    for name in ("val", "test"):
        if history.epochs and f"{name}_acc" in history.epochs[0]:
            accs = history.column(f"{name}_acc")
            last = ", ".join(f"{a:.2f}" for a in accs[-LAST_EPOCHS:])
            lines.append(f"{name} accuracy: best {max(accs):.2f}%, last {LAST_EPOCHS} epochs {last}%")
    last = history.epochs[-1]
    against = "val" if "val_acc" in last else "test"  # the gap a lesson reads is against the split it judges on
    lines.append(f"train (running, train mode) minus {'validation' if against == 'val' else 'test'} accuracy in "
                 f"the last epoch: {last['train_acc'] - last[f'{against}_acc']:+.2f} points")
    holds = claim_holds(history.column("test_acc"))
    lines.append(f"every one of the last {LAST_EPOCHS} epochs >= {TARGET:.2f}% on the test set: "
                 f"{'yes' if holds else 'no'}")
    return "\n".join(lines)


def recorded_label(meta: Mapping[str, Any]) -> str:
    """Return how a recorded result is labelled in notebooks: "recorded on DEVICE, DATE, code VERSION"."""
    parts = [f"recorded on {meta.get('device', 'an unrecorded device')}"]
    parts += [str(meta[key]) if key == "date" else f"code {meta[key]}" for key in ("date", "code") if meta.get(key)]
    return ", ".join(parts)


def runs_label(runs: Sequence[Mapping[str, Any]]) -> str:
    """Return where a seeds file's runs were recorded, grouped: "seeds 0-4 on DEVICE (no code version recorded);
    seeds 5-9 on DEVICE", so that no run is labelled with another's device (each run's code is in the file)."""
    groups: list[tuple[str, list[int]]] = []
    for run in sorted(runs, key=lambda run: run["seed"]):
        label = f"on {run.get('device', 'an unrecorded device')}" + (
            "" if run.get("code") else " (no code version recorded)")
        if groups and groups[-1][0] == label:
            groups[-1][1].append(run["seed"])
        else:
            groups.append((label, [run["seed"]]))

    def seeds(numbers: list[int]) -> str:
        consecutive = numbers == list(range(numbers[0], numbers[-1] + 1))
        return (f"seeds {numbers[0]}-{numbers[-1]}" if len(numbers) > 1 and consecutive
                else f"seed{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}")

    return "; ".join(f"{seeds(numbers)} {label}" for label, numbers in groups)


def steady_seconds(epoch_seconds: Sequence[float]) -> float:
    """Return the median epoch time after the first epoch, which pays for compiling and warm-up."""
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


# --- steps/NAME.json: one full run of a step's notebook -----------------------------------------------------


def record_run(name: str, history: History, folder: Path | None = None) -> Path | None:
    """Write a full run's history to FOLDER/NAME.json (default: the evidence's steps/) and return the path.

    Does nothing (returns None) for a smoke run, or outside a checkout of the repository (a notebook opened
    alone in Colab keeps its own run to itself and leaves the recorded evidence as it was).
    """
    folder = evidence(STEPS) if folder is None else Path(folder)
    if history.meta.get("smoke", True) or not in_checkout() or not folder.is_dir():
        return None
    path = folder / f"{name}.json"
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


def read_step_run(path: Path) -> History:
    """Return the history in a file written by `record_run` (its meta names the model's recipe and device)."""
    return History.from_dict(read_json(path))


def summarize_step_run(path: Path) -> RunSummary:
    """Read a file written by `record_run` and return its summary."""
    data = read_json(path)
    history = History.from_dict(data)
    accs = history.column("test_acc")
    return RunSummary(data["model"], history.meta["params"], len(accs), max(accs), tuple(accs[-LAST_EPOCHS:]),
                      statistics.mean(history.column("seconds")), history.meta["device"])


def step_summaries(folder: Path | None = None) -> list[RunSummary]:
    """Return the summaries of the runs recorded in `folder` (default: steps/), in the order models are registered."""
    folder = evidence(STEPS) if folder is None else Path(folder)
    paths = [folder / f"{name}.json" for name in MODELS]
    return [summarize_step_run(path) for path in paths if path.exists()]


# --- seeds_NAME.json: a registered model over several seeds -------------------------------------------------


@dataclass(frozen=True)
class SeedRun:
    """One seed of a multi-seed file: its test accuracy per epoch, how long the run took, where it ran."""

    seed: int
    test_acc: tuple[float, ...]
    seconds: float
    device: str
    meta: dict[str, Any]  # what else the run recorded: speed levers, code version, date, train accuracy, ...


@dataclass(frozen=True)
class SeedsFile:
    """A multi-seed file written by benchmarks/seeds.py: the model, its recorded recipe, and its runs by seed."""

    model: str
    params: int
    recipe: dict[str, Any]  # as recorded; `Recipe.from_dict` reads it
    runs: tuple[SeedRun, ...]  # sorted by seed

    @property
    def label(self) -> str:
        """The model's name plus what sets the file apart: the speed levers its runs used and any difference from
        the model's registered recipe and network, and a GPU's runs, e.g. "final (amp)", "under5k (recipe with
        ema=0)", "under3762 (an earlier 3,736-parameter network, ...)" or "final (on a GPU)"."""
        parts = [lever for lever in ("amp", "compile", "graph")
                 if any(run.meta.get("speed", {}).get(lever) for run in self.runs)]
        if any(run.device.startswith("cuda") for run in self.runs):
            parts.append("on a GPU")
        if self.model in MODELS and self.params != count_parameters(MODELS[self.model]()):
            parts.append(f"an earlier {self.params:,}-parameter network")
        changes = recipe_changes(self.model, self.recipe)
        if changes:
            parts.append(f"recipe with {', '.join(changes)}")
        return f"{self.model} ({', '.join(parts)})" if parts else self.model


def recipe_changes(model: str, recorded: Mapping[str, Any]) -> list[str]:
    """Return the fields where a recorded recipe differs from the model's registered one, e.g. ["ema=0"] (none
    for a model that is not registered)."""
    return Recipe.from_dict(recorded).changes_from(RECIPES[model]) if model in RECIPES else []


def read_seeds(path: Path) -> SeedsFile:
    """Return the multi-seed file at `path` (e.g. `seeds_path("final")`)."""
    data = read_json(path)
    runs = tuple(SeedRun(run["seed"], tuple(run["test_acc"]), run["seconds"], run["device"],
                         {k: v for k, v in run.items() if k not in ("seed", "test_acc", "seconds", "device")})
                 for run in sorted(data["runs"], key=lambda run: run["seed"]))
    return SeedsFile(data["model"], data["params"], data["recipe"], runs)


@dataclass(frozen=True)
class SeedsSummary:
    """A multi-seed file in figures: per seed, its last epochs' test accuracies."""

    model: str  # the file's label, e.g. "final (amp)"
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


def summarize_seeds(path: Path) -> SeedsSummary:
    """Read a multi-seed file written by benchmarks/seeds.py and return its summary."""
    seeds = read_seeds(path)
    if not seeds.runs:
        raise ValueError(f"{path} holds no runs yet; run benchmarks/seeds.py --model {seeds.model}")
    devices = sorted({run.device for run in seeds.runs})
    return SeedsSummary(seeds.label, seeds.params, seeds.recipe["epochs"],
                        {run.seed: run.test_acc[-LAST_EPOCHS:] for run in seeds.runs}, ", ".join(devices))


# --- design_runs.jsonl: the design studies' runs, on the validation split -----------------------------------


def read_design_runs(path: Path | None = None) -> list[dict[str, Any]]:
    """Return every recorded design run (an empty list when nothing is recorded)."""
    return read_jsonl(evidence(DESIGN_RUNS) if path is None else path)


def append_design_run(record: Mapping[str, Any], path: Path | None = None) -> None:
    """Append one design run (benchmarks/design.py holds the lock while it does)."""
    append_jsonl(evidence(DESIGN_RUNS) if path is None else path, dict(record))


def run_matches(design: Design, run: Mapping[str, Any]) -> bool:
    """Return whether a recorded run was made with this design: same recipe (tolerantly) and parameter count."""
    return design.recipe.matches(run["recipe"]) and run["params"] == count_parameters(design.build())


def run_figure(run: Mapping[str, Any], key: str = "val_acc") -> float:
    """Return a run's figure: the mean of its last epochs' validation accuracy (less jumpy than one epoch)."""
    return statistics.mean(epoch[key] for epoch in run["epochs"][-LAST_EPOCHS:])


class StaleStudyError(ValueError):
    """A design has recorded runs, but none made with its current recipe and model: the study must be rerun."""


def stale_designs(study: str, runs: Sequence[Mapping[str, Any]] | None = None,
                  threads: int = STANDARD_THREADS) -> list[str]:
    """Return one line per design of `study` whose recorded runs (at `threads`) all differ from the design as it is
    now, naming the design and what differs; none when every design with runs has some that match it."""
    runs = read_design_runs() if runs is None else runs
    lines = []
    for design in STUDIES[study]:
        mine = [r for r in runs if r["key"] == design.key and r["threads"] == threads]
        if not mine or any(run_matches(design, r) for r in mine):
            continue
        params = count_parameters(design.build())
        differences = set()
        for run in mine:
            try:
                recorded = Recipe.from_dict(run["recipe"])
                if recorded != design.recipe:
                    differences.add(f"recipe {', '.join(recorded.changes_from(design.recipe))} recorded, "
                                    f"{', '.join(design.recipe.changes_from(recorded))} now")
            except (ValueError, TypeError) as error:
                differences.add(f"a recipe this version cannot read ({error})")
            if run["params"] != params:
                differences.add(f"{run['params']:,} parameters recorded, {params:,} now")
        lines.append(f"study {study!r}, design {design.key!r}: {len(mine)} recorded run(s), none with its current "
                     f"recipe and model ({'; '.join(sorted(differences))}); rerun "
                     f"`python benchmarks/design.py {study} --only {design.key}`")
    return lines


def summarize_study(study: str, runs: Sequence[Mapping[str, Any]] | None = None,
                    threads: int = STANDARD_THREADS) -> list[DesignSummary]:
    """Return one summary per design of `study` that has runs, in the study's order (runs at `threads` only).

    Only runs whose recorded recipe and parameter count match the design count. Raises StaleStudyError, naming
    each design and what differs, when a design has runs but none that match (its recipe or model changed since).
    """
    runs = read_design_runs() if runs is None else runs
    stale = stale_designs(study, runs, threads)
    if stale:
        raise StaleStudyError("\n".join(stale))
    summaries = []
    for design in STUDIES[study]:
        mine = sorted((r for r in runs if r["key"] == design.key and r["threads"] == threads
                       and run_matches(design, r)), key=lambda r: r["seed"])
        if mine:
            summaries.append(DesignSummary(design.key, design.label, mine[0]["params"],
                                           {r["seed"]: run_figure(r) for r in mine},
                                           {r["seed"]: run_figure(r, "test_acc") for r in mine}, design.base))
    return summaries


def design_histories(key: str, runs: Sequence[Mapping[str, Any]] | None = None,
                     threads: int = STANDARD_THREADS) -> dict[int, History]:
    """Return the recorded runs of one design as Histories, by seed."""
    runs = read_design_runs() if runs is None else runs
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


def unfinished_keys() -> set[str]:
    """Return the design keys that belong only to studies still being recorded (studies.UNFINISHED_STUDIES)."""
    finished = {d.key for name, designs in STUDIES.items() if name not in UNFINISHED_STUDIES for d in designs}
    return {d.key for name in UNFINISHED_STUDIES for d in STUDIES[name]} - finished


def measure_noise(runs: Sequence[Mapping[str, Any]] | None = None) -> Noise:
    """Return the run-to-run noise of the recorded design runs: across seeds, and across thread counts. By default
    the runs of unfinished studies are left out, so the figure does not move while one is being recorded."""
    if runs is None:
        pending = unfinished_keys()
        runs = [run for run in read_design_runs() if run["key"] not in pending]
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


# --- legacy/ladder_trials_test_judged.jsonl: the ladder's first trials --------------------------------------


@dataclass(frozen=True)
class Trial:
    """One of the ladder's first single-seed trials, judged on the test set when it ran; kept as a record only."""

    name: str
    architecture: str  # the class it built, e.g. "LadderNet"
    spec: dict[str, Any]  # the class's arguments
    recipe_changes: dict[str, Any]  # against the recipe of the time, in that time's spelling
    seed: int
    params: int
    test_acc: tuple[float, ...]
    train_acc: tuple[float, ...]

    @property
    def last_accs(self) -> tuple[float, ...]:
        """The last LAST_EPOCHS test accuracies."""
        return self.test_acc[-LAST_EPOCHS:]


def read_trials(path: Path | None = None) -> list[Trial]:
    """Return the ladder's first trials, in the order they were recorded."""
    return [Trial(t["name"], t["class"], t["spec"], t["recipe_changes"], t["seed"], t["params"], tuple(t["test_acc"]),
                  tuple(t["train_acc"])) for t in read_jsonl(evidence(LEGACY_TRIALS) if path is None else path)]


def find_trial(trials: Sequence[Trial], name: str, seed: int) -> Trial:
    """Return the trial called `name` run with `seed`."""
    for trial in trials:
        if trial.name == name and trial.seed == seed:
            return trial
    raise KeyError(f"no trial {name!r} with seed {seed} among {sorted({(t.name, t.seed) for t in trials})}")


# --- what the benchmarks timed: notebooks, grading, speed ---------------------------------------------------

NotebookTimes = dict[str, dict[str, float]]  # device -> notebook -> seconds of a full run
GradingTimes = dict[str, list[dict[str, Any]]]  # machine -> one entry per number of kernels at once


def read_notebook_times(path: Path | None = None) -> NotebookTimes:
    """Return the recorded full-run seconds per device and notebook (none recorded: empty)."""
    return read_json(evidence(NOTEBOOK_TIMES) if path is None else path, {})


def record_notebook_time(device: str, notebook: str, seconds: float, path: Path | None = None) -> None:
    """Record one notebook's full-run seconds on `device`, keeping every other entry."""
    path = evidence(NOTEBOOK_TIMES) if path is None else path
    times = read_notebook_times(path)
    times.setdefault(device, {})[notebook] = round(seconds, 1)
    write_json(path, times)


def read_grading_times(path: Path | None = None) -> GradingTimes:
    """Return the grading benchmark's results per machine (none recorded: empty)."""
    return read_json(evidence(GRADING_TIMES) if path is None else path, {})


def record_grading_times(machine: str, runs: Sequence[Mapping[str, Any]], path: Path | None = None) -> None:
    """Record the grading benchmark's runs on `machine`, replacing that machine's earlier ones."""
    path = evidence(GRADING_TIMES) if path is None else path
    results = read_grading_times(path)
    results[machine] = [dict(run) for run in runs]
    write_json(path, results)


@dataclass(frozen=True)
class SpeedRow:
    """One configuration of a speed benchmark, in medians over its runs."""

    config: str
    runs: int
    wall: float  # seconds per run, data loading included
    epoch: float  # seconds per epoch after the first (`steady_seconds`)
    vs_baseline: float  # epoch / the baseline's epoch
    test_accs: tuple[float, ...]  # each run's test accuracy at its end


@dataclass(frozen=True)
class SpeedSummary:
    """A speed benchmark (benchmarks/speed.py) on one device: each configuration against the baseline."""

    device: str
    model: str
    epochs: int
    rows: tuple[SpeedRow, ...]


def summarize_speed(data: Mapping[str, Any]) -> SpeedSummary:
    """Return the summary of a speed benchmark's data (what benchmarks/speed.py writes)."""
    base = statistics.median(steady_seconds(run["epochs"]) for run in data["runs"][data["baseline"]])
    rows = []
    for name, runs in data["runs"].items():
        epoch = statistics.median(steady_seconds(run["epochs"]) for run in runs)
        rows.append(SpeedRow(name, len(runs), statistics.median(run["wall"] for run in runs), epoch, epoch / base,
                             tuple(run["test_acc"] for run in runs)))
    return SpeedSummary(data["device"], data["model"], data["epochs"], tuple(rows))


def read_speed(path: Path) -> SpeedSummary:
    """Read a speed benchmark file (e.g. one of `speed_paths()`) and return its summary."""
    return summarize_speed(read_json(path))


# --- dispatch_counts.json: operations a training step dispatches (benchmarks/dispatch_count.py) -------------

DISPATCH_COUNTS = "dispatch_counts.json"


@dataclass(frozen=True)
class DispatchCounts:
    """Operations dispatched per training step, per recipe and way of stepping, and any timing taken beside them."""

    device: str
    ways: tuple[str, ...]
    counts: Mapping[str, Mapping[str, float]]  # recipe -> way -> operations per step
    timed: Mapping[str, Any] | None  # {"model", "epochs", "seconds": {way: [seconds per run]}}


def read_dispatch_counts(path: Path | None = None) -> DispatchCounts:
    """Read benchmarks/dispatch_count.py's results (default: the recorded file)."""
    data = read_json(path or evidence(DISPATCH_COUNTS))
    return DispatchCounts(data["device"], tuple(data["ways"]), data["counts"], data.get("timed"))


# --- cpu_levers.json: the CPU levers side by side (benchmarks/cpu_levers.py) ---------------------------------

CPU_LEVERS = "cpu_levers.json"


@dataclass(frozen=True)
class CpuLevers:
    """Wall seconds of the same training run in each CPU configuration, the first the baseline."""

    device: str
    model: str
    epochs: int
    seconds: Mapping[str, Sequence[float]]  # configuration -> seconds of each run, in the order run
    test_acc: Mapping[str, Sequence[float]]


def read_cpu_levers(path: Path | None = None) -> CpuLevers:
    """Read benchmarks/cpu_levers.py's results (default: the recorded file)."""
    data = read_json(path or evidence(CPU_LEVERS))
    return CpuLevers(data["device"], data["model"], data["epochs"], {name: data["seconds"][name] for name in
                                                                     data["configs"]}, data["test_acc"])


# --- gpu_check_*.json: what benchmarks/gpu_check.sh measured on a GPU ----------------------------------------


def gpu_check_paths() -> list[Path]:
    """Return every gpu_check.sh report kept as evidence, in name order."""
    return sorted(evidence().glob("gpu_check_*.json"))


@dataclass(frozen=True)
class GpuStep:
    """One step of a gpu_check.sh report: how it ended and what it measured."""

    part: str
    name: str
    state: str  # "ok", "failed", "timed out" or "skipped: ..."
    seconds: float | None  # the step's wall time, the command's start included
    limit_s: int | None
    run_s: float | None  # a training command's own wall time, data loading included
    epoch_s: tuple[float, ...]
    test_acc: tuple[float, ...]
    notebooks: tuple[Mapping[str, Any], ...]  # a notebooks step: per notebook, mode, ok, seconds, error
    seeds: tuple[Mapping[str, Any], ...]  # a seeds step: every seed it finished (kept when it was stopped)
    seed: int | None = None  # a training step's seed


@dataclass(frozen=True)
class GpuCheck:
    """A gpu_check.sh report (benchmarks/gpu_report.py): the machine, torch, the code, and every step."""

    device: str
    torch: str
    code: str
    date: str
    steps: tuple[GpuStep, ...]


def read_gpu_check(path: Path) -> GpuCheck:
    """Read a gpu_check.sh report (e.g. one of `gpu_check_paths()`)."""
    data = read_json(path)
    if data.get("smoke"):
        raise ValueError(f"{path} is a smoke check's report: its figures are not measurements")
    steps = []
    for step in data["steps"]:
        figures = step.get("figures") or {}
        runs = tuple(figures.get("runs") or ())
        steps.append(GpuStep(step["part"], step["name"], step["state"], step["seconds"], step["limit_s"],
                             figures.get("run_s"), tuple(figures.get("epoch_s") or ()),
                             tuple(figures.get("test_acc") or ()), runs if step["part"] == "notebooks" else (),
                             runs if step["part"].startswith("seeds") else (), figures.get("seed")))
    return GpuCheck(data["device"], data["torch"], data["code"], data["date"], tuple(steps))


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
