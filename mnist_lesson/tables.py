"""Every markdown table of figures the course shows: notebooks print them, the README and docs/ embed them.

Each function takes summaries (or records) read by `mnist_lesson.records` and returns markdown, so a figure
can never be typed by hand and no table reads a file. `benchmarks/readme_tables.py` writes them into the
README and docs/.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from mnist_lesson.config import LAST_EPOCHS, TARGET, Recipe
from mnist_lesson.models import MODELS, get_model
from mnist_lesson.receptive_field import layer_table
from mnist_lesson.records import (
    CpuLevers,
    DispatchCounts,
    GpuCheck,
    RunSummary,
    SeedsFile,
    SeedsSummary,
    SpeedSummary,
    Trial,
    claim_holds,
)
from mnist_lesson.studies import DesignSummary, best_design, compare


def _accs(values: Sequence[float]) -> str:
    return ", ".join(f"{a:.2f}" for a in values)


def steps_table(summaries: Sequence[RunSummary]) -> str:
    """Return a markdown table of recorded runs: parameters, final RF, best and last-3 accuracy, time, device."""
    rows = [f"| model | parameters | RF | best test acc | last {LAST_EPOCHS} epochs | epochs | s/epoch | device |",
            "|---|---:|---:|---:|---|---:|---:|---|"]
    for s in summaries:
        rf = layer_table(get_model(s.model)).final_rf if s.model in MODELS else "?"
        rows.append(f"| {s.model} | {s.params:,} | {rf} | {s.best_acc:.2f} | {_accs(s.last_accs)} | {s.epochs} "
                    f"| {s.seconds_per_epoch:.1f} | {s.device} |")
    return "\n".join(rows)


def seeds_table(summaries: Sequence[SeedsSummary]) -> str:
    """Return a markdown table of multi-seed results: seeds passing, worst and per-seed last-epoch minima."""
    rows = [f"| model | parameters | epochs | seeds with all last {LAST_EPOCHS} >= {TARGET:.2f} "
            f"| worst of the last {LAST_EPOCHS} | claim | lowest of the last {LAST_EPOCHS}, per seed | device |",
            "|---|---:|---:|---:|---:|---|---|---|"]
    for s in summaries:
        per_seed = _accs([low for _, low in sorted(s.seed_mins.items())])
        rows.append(f"| {s.model} | {s.params:,} | {s.epochs} | {s.passing} of {len(s.last_accs)} | {s.worst:.2f} "
                    f"| {s.verdict} | {per_seed} | {s.device} |")
    return "\n".join(rows)


def seed_runs_table(files: Sequence[SeedsFile]) -> str:
    """Return a markdown table with one row per seed of every multi-seed file: last epochs, verdict, time."""
    rows = [f"| model | parameters | seed | last {LAST_EPOCHS} epochs (test acc %) | all >= {TARGET:.2f} | best "
            "| s/run | device |", "|---|---:|---:|---|---|---:|---:|---|"]
    for seeds in files:
        for run in seeds.runs:
            verdict = "yes" if claim_holds(run.test_acc) else "NO"
            rows.append(f"| {seeds.label} | {seeds.params:,} | {run.seed} | {_accs(run.test_acc[-LAST_EPOCHS:])} "
                        f"| {verdict} | {max(run.test_acc):.2f} | {run.seconds:.0f} | {run.device} |")
    return "\n".join(rows)


def ladder_table(summaries: Sequence[SeedsSummary]) -> str:
    """Return the summary of multi-seed files, largest model first: seeds passing, worst epoch."""
    return seeds_table(sorted(summaries, key=lambda s: -s.params))


# How a change to a recipe reads in a table (notebook 08); a field not listed here reads as "name=value".
_CHANGE_WORDS = {
    "batch_size": lambda value: f"batches of {value}",
    "ema": lambda value: f"a moving average of the weights evaluated (decay {value:g})",
    "augment.shift": lambda value: f"shifts of up to {value:.0%}",
    "augment.rotation": lambda value: f"rotations of up to {value:g} degrees",
}


def recipe_in_words(recipe: Recipe, base: Recipe, base_name: str) -> str:
    """Return `recipe` in words against `base`: "the ladder recipe", or "the ladder recipe with batches of 64"."""
    changes = [item.split("=", 1) for item in recipe.changes_from(base)]
    words = [_CHANGE_WORDS[name](getattr(recipe.augment, name[8:]) if name.startswith("augment.")
                                 else getattr(recipe, name)) if name in _CHANGE_WORDS else f"`{name}={value}`"
             for name, value in changes]
    return f"the {base_name}" + (f" with {', '.join(words)}" if words else "")


def _seed_span(seeds: Sequence[int]) -> str:
    seeds = sorted(seeds)
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def seeds_verdict(summary: SeedsSummary) -> str:
    """Return a multi-seed verdict in words: "holds on every one of seeds 0-9", or "falls short on seed 19 (99.39) of
    seeds 0-19": each seed that falls short with the lowest of its last epochs."""
    short = {seed: low for seed, low in sorted(summary.seed_mins.items()) if low < TARGET}
    span = _seed_span(list(summary.last_accs))
    if not short:
        return f"holds on every one of seeds {span}"
    if len(short) == len(summary.last_accs):
        return f"falls short on every one of seeds {span} ({_accs(list(short.values()))})"
    where = ", ".join(f"{seed} ({low:.2f})" for seed, low in short.items())
    return f"falls short on seed{'s' if len(short) > 1 else ''} {where} of seeds {span}"


def rungs_table(summaries: Sequence[SeedsSummary], limits: Mapping[str, int], recipes: Mapping[str, Recipe],
                base: Recipe, base_name: str) -> str:
    """Return the ladder in one table (notebook 08): per model its parameters against its limit, its recipe in words
    and its multi-seed verdict."""
    rows = [f"| model | parameters (limit) | recipe | seeds with all last {LAST_EPOCHS} epochs >= {TARGET:.2f} "
            "| verdict |", "|---|---:|---|---:|---|"]
    for s in summaries:
        rows.append(f"| `{s.model}` | {s.params:,} ({limits[s.model]:,}) "
                    f"| {recipe_in_words(recipes[s.model], base, base_name)} | {s.passing} of {len(s.last_accs)} "
                    f"| {seeds_verdict(s)} |")
    return "\n".join(rows)


def trials_table(trials: Sequence[Trial]) -> str:
    """Return a markdown table of the ladder's first single-seed trials (evidence/legacy, judged on the test set)."""
    rows = [f"| trial | parameters | architecture | recipe change | seed | last {LAST_EPOCHS} epochs "
            "| train acc, last epoch |", "|---|---:|---|---|---:|---|---:|"]
    for trial in trials:
        spec = ", ".join(f"{key}={value}" for key, value in trial.spec.items())
        change = ", ".join(f"{key}={value}" for key, value in trial.recipe_changes.items()) or "none"
        rows.append(f"| {trial.name} | {trial.params:,} | {trial.architecture}({spec}) | {change} | {trial.seed} "
                    f"| {_accs(trial.last_accs)} | {trial.train_acc[-1]:.2f} |")
    return "\n".join(rows)


def speed_table(summaries: Sequence[SpeedSummary]) -> str:
    """Return the markdown table of the speed benchmark (benchmarks/speed.py): per device, each configuration."""
    if not summaries:
        return "Not measured yet: run `python benchmarks/speed.py`."
    rows = ["| device | model | configuration | runs | epochs per run | run s (data loading included) "
            "| s/epoch after the first | vs the assignment's DataLoader | test acc after the run |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        for row in s.rows:
            rows.append(f"| {s.device} | {s.model} | {row.config} | {row.runs} | {s.epochs} | {row.wall:.1f} "
                        f"| {row.epoch:.2f} | {row.vs_baseline:.2f}x | {_accs(row.test_accs)} |")
    return "\n".join(rows)


def notebook_times_table(times: Mapping[str, Mapping[str, float]]) -> str:
    """Return the markdown table of full-run wall times per notebook and device (benchmarks/run_notebooks.py), from
    `records.read_notebook_times()`."""
    devices = sorted(times)
    if not devices:
        return "Not measured yet: run `python benchmarks/run_notebooks.py`."
    rows = ["| notebook | " + " | ".join(f"minutes on {d}" for d in devices) + " |",
            "|---|" + "---:|" * len(devices)]
    names = sorted({name for per_device in times.values() for name in per_device})
    for name in names:
        cells = [f"{times[d][name] / 60:.1f}" if name in times[d] else "not measured" for d in devices]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"{sum(times[d].values()) / 60:.1f}" for d in devices]
    rows.append("| all notebooks | " + " | ".join(totals) + " |")
    return "\n".join(rows)


def _compared(summaries: Sequence[DesignSummary]) -> list[tuple[DesignSummary, DesignSummary]]:
    """Return (before, after) for every design after the first: `after` against its base, else the design above it."""
    by_key = {s.key: s for s in summaries}
    missing = sorted({s.base for s in summaries if s.base is not None} - set(by_key))
    if missing:
        raise ValueError(f"designs {missing} are named as bases but have no recorded runs: run them first")
    return [(above if after.base is None else by_key[after.base], after)
            for above, after in zip(summaries, summaries[1:], strict=False)]


def _against(before: DesignSummary, after: DesignSummary) -> str:
    return "" if after.base is None else f" (against `{before.key}`)"


def study_table(summaries: Sequence[DesignSummary]) -> str:
    """Return a markdown table of a design study: per design the validation figure of every seed, mean and range,
    and the change from the design it changes (the one above, or the one named); test figures are shown for
    reference, never used to choose."""
    rows = [f"| design | parameters | validation acc per seed (mean of last {LAST_EPOCHS} epochs) | mean | range "
            "| change in mean | test acc, mean (not used to choose) |", "|---|---:|---|---:|---:|---:|---:|"]
    changes = {after.key: f"{after.mean - before.mean:+.2f}{_against(before, after)}"
               for before, after in _compared(summaries)}
    for s in summaries:
        per_seed = ", ".join(f"{s.figures[seed]:.2f}" for seed in sorted(s.figures))
        test = statistics.mean(s.test_figures.values())
        rows.append(f"| {s.label} | {s.params:,} | {per_seed} | {s.mean:.2f} | {s.low:.2f}-{s.high:.2f} "
                    f"| {changes.get(s.key, '')} | {test:.2f} |")
    return "\n".join(rows)


def study_chain(summaries: Sequence[DesignSummary]) -> str:
    """Return markdown bullets for a study whose designs each make one change: every design against the one it
    changes (its `base`, else the one above it), then the study's choice (the highest validation mean) against the
    first design."""
    lines = [f"- {after.label}{_against(before, after)}: {compare(before, after)}"
             for before, after in _compared(summaries)]
    chosen = best_design(summaries)
    if chosen is summaries[0]:
        lines.append(f"- the choice, by the highest validation mean: the first design, **{chosen.label}**; no change "
                     "beat it")
    elif chosen is summaries[1] and chosen.base is None:  # its comparison with the first design is the line above
        lines.append(f"- the choice, by the highest validation mean: **{chosen.label}** (compared above)")
    else:
        lines.append(f"- the choice, by the highest validation mean: **{chosen.label}**; against the first design: "
                     f"{compare(summaries[0], chosen)}")
    return "\n".join(lines)


def grading_table(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Return the markdown table of the grading benchmark (benchmarks/grading.py; `records.read_grading_times()`):
    per machine, isolation mode and number of kernels at once, the wall time for the whole folder, the seconds per
    submission and the mean points of each kind."""
    if not results:
        return "Not measured yet: run `python benchmarks/grading.py`."
    rows = ["| machine | isolation | kernels at once | submissions | wall time (min) | s per submission | vs the "
            "machine's first row | mean points: correct, partly right, raises, invalid |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for machine, runs in sorted(results.items()):
        base = runs[0]["s_per_submission"]
        for run in runs:
            means = ", ".join(f"{run['mean_points'][kind]:.1f}" if kind in run["mean_points"] else "none"
                              for kind in ("correct", "partly", "raises", "invalid"))
            isolation = run.get("isolation", "none (before isolation existed)")
            rows.append(f"| {machine} | {isolation} | {run['jobs']} | {run['submissions']} | "
                        f"{run['wall_s'] / 60:.1f} | {run['s_per_submission']:.2f} | "
                        f"{base / run['s_per_submission']:.2f}x | {means} of "
                        f"{run['max_points']} |")
    machine, runs = sorted(results.items())[-1]
    isolated = [run for run in runs if run.get("isolation") == "namespaces"] or runs  # the grader's default mode
    fastest = min(isolated, key=lambda run: run["s_per_submission"])
    rows.append(f"\nAt that pace, {fastest['jobs']} kernel(s) at once "
                f"{'each in its own namespaces ' if fastest.get('isolation') == 'namespaces' else ''}"
                "grade a class of 300 in about "
                f"{300 * fastest['s_per_submission'] / 60:.0f} minutes on {machine}. Its submissions that raise after "
                f"their answers got {fastest['mean_points'].get('raises', 0):.1f} points on average, the invalid "
                f"files {fastest['mean_points'].get('invalid', 0):.1f}.")
    return "\n".join(rows)


def seed_groups_table(summaries: Sequence[SeedsSummary], groups: dict[str, Sequence[int]]) -> str:
    """Return a markdown table: per model and group of seeds, how many of the group's recorded seeds hold the
    claim and the worst of their last epochs (for example the seeds a rung was chosen on against later ones)."""
    rows = ["| model | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for s in summaries:
        cells = []
        for seeds in groups.values():
            ran = [seed for seed in seeds if seed in s.last_accs]
            held = sum(claim_holds(s.last_accs[seed]) for seed in ran)
            worst = min((min(s.last_accs[seed]) for seed in ran), default=None)
            cells.append(f"{held} of {len(ran)} hold, worst {worst:.2f}" if ran else "not run yet")
        rows.append(f"| {s.model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def gpu_check_table(checks: Sequence[GpuCheck]) -> str:
    """Return the markdown table of gpu_check.sh's reports (`records.read_gpu_check`): every step, how it ended, and
    what it measured."""
    if not checks:
        return "Not measured yet: no GPU has run `benchmarks/gpu_check.sh`."
    rows = ["| device, torch, code (date) | step | ended | wall s (limit) | what it measured |",
            "|---|---|---|---:|---|"]
    for check in checks:
        for step in check.steps:
            wall = "-" if step.seconds is None else f"{step.seconds:.1f}"
            rows.append(f"| {check.device}, {check.code} ({check.date[:10]}) | {step.part}/{step.name} | {step.state} "
                        f"| {wall} ({step.limit_s}) | {_gpu_figures(step)} |")
    return "\n".join(rows)


def _gpu_figures(step: Any) -> str:
    if step.notebooks:
        return "; ".join(
            f"{run['notebook'][:2]} ({run['mode']}): " + ("every cell ran" if run["ok"] else
                                                          f"stopped at cell {run['error']['cell']}, "
                                                          f"{run['error']['ename']}: {run['error']['evalue']}")
            + f" in {run['seconds']:.1f} s" for run in step.notebooks)
    if step.seeds:
        return "seeds finished: " + "; ".join(f"{run['seed']} (last {LAST_EPOCHS} epochs "
                                              f"{_accs(run['test_acc'][-LAST_EPOCHS:])}, {run['seconds']:.0f} s)"
                                              for run in step.seeds)
    if step.run_s is None:
        return "nothing: stopped before the end" if step.state != "ok" else "-"
    epochs = step.epoch_s
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
    last = step.test_acc[-LAST_EPOCHS:]
    return (f"{len(epochs)} epochs in {step.run_s:.1f} s, data included (first epoch {epochs[0]:.1f} s, later ones "
            f"{later:.1f} s median); last {len(last)} epochs {_accs(last)}: "
            + ("every one reaches" if claim_holds(step.test_acc) else "NOT every one reaches") + f" {TARGET:.2f}")


def dispatch_table(counts: DispatchCounts) -> str:
    """Return the markdown table of operations per training step, each way, per recipe, and the timing beside it."""
    rows = ["| recipe | " + " | ".join(f"operations a step, {way}" for way in counts.ways) + " |",
            "|---|" + "---:|" * len(counts.ways)]
    for name, row in counts.counts.items():
        rows.append(f"| {name} | " + " | ".join(f"{row[way]:.1f}" for way in counts.ways) + " |")
    text = "\n".join(rows) + f"\n\nCounted on {counts.device}."
    if counts.timed:
        timed = counts.timed
        text += (f" Timed there too, {timed['epochs']} epoch(s) of `{timed['model']}` each way, alternating: "
                 + "; ".join(f"{way} {statistics.median(s):.1f} s (median of {len(s)}: {_accs(s)})"
                             for way, s in timed["seconds"].items()) + ".")
    return text


def cpu_levers_table(levers: CpuLevers) -> str:
    """Return the markdown table of the CPU levers: each configuration's median time against the first one's."""
    base = statistics.median(next(iter(levers.seconds.values())))
    rows = [f"| configuration | s per run ({levers.epochs} epoch of `{levers.model}`), median | runs | vs the first "
            "| test acc after each run |", "|---|---:|---:|---:|---|"]
    for name, seconds in levers.seconds.items():
        median = statistics.median(seconds)
        rows.append(f"| {name} | {median:.1f} | {len(seconds)} | {median / base:.2f}x "
                    f"| {_accs(levers.test_acc[name])} |")
    return "\n".join(rows) + f"\n\nOn {levers.device}."


def unseen_seeds_verdict(summaries: Sequence[SeedsSummary], seeds: Sequence[int]) -> str:
    """Return, per model, how its seeds in `seeds` (the ones no choice had seen) went: how many ran, how many hold,
    and each one's lowest last-epoch accuracy."""
    parts = []
    for s in summaries:
        ran = [seed for seed in seeds if seed in s.last_accs]
        if not ran:
            parts.append(f"`{s.model}` has not run any of them yet.")
            continue
        held = sum(claim_holds(s.last_accs[seed]) for seed in ran)
        lowest = ", ".join(f"{seed}: {min(s.last_accs[seed]):.2f}" for seed in ran)
        missing = len(seeds) - len(ran)
        parts.append(f"`{s.model}` ({s.params:,} parameters): {held} of the {len(ran)} that ran hold (the lowest of "
                     f"each seed's last {LAST_EPOCHS} epochs: {lowest})"
                     + (f"; {missing} of the {len(seeds)} have not run yet." if missing else "."))
    return f"On seeds {min(seeds)}-{max(seeds)}, which no choice of these recipes had seen: " + " ".join(parts)


def smaller_sizes_table(stretch: DesignSummary, validation: Sequence[DesignSummary]) -> str:
    """Return the study of the sizes below the stretch rung on the validation split (notebook 08, docs/results.md),
    with the stretch rung's chosen design as the first row: each size against the row above it."""
    return study_table([replace(stretch, base=None), *validation])


def _on_the_same_seeds(summary: SeedsSummary, seeds: Sequence[int]) -> str:
    """Return how `summary` went on `seeds` alone: "k of n hold, mean of the lowest last epochs X"."""
    ran = [seed for seed in seeds if seed in summary.seed_mins]
    held = sum(claim_holds(summary.last_accs[seed]) for seed in ran)
    mean = statistics.mean(summary.seed_mins[seed] for seed in ran) if ran else float("nan")
    return f"{held} of {len(ran)} hold, the mean of each seed's lowest last epoch {mean:.2f}"


def smaller_sizes_verdict(stretch: DesignSummary, validation: Sequence[DesignSummary], stretch_seeds: SeedsSummary,
                          sizes: Sequence[SeedsSummary]) -> str:
    """Return where each size below the stretch rung lands (notebook 08, the README): its validation mean against the
    stretch rung's chosen design, its test seeds beside the stretch rung's on the same seeds, and the smallest size
    that holds on every seed it ran, if any.

    `validation` and `sizes` pair up by parameter count (largest first); `stretch_seeds` is the stretch rung's seeds.
    """
    if [v.params for v in validation] != [s.params for s in sizes]:
        raise ValueError(f"validation designs of {[v.params for v in validation]} parameters for sizes of "
                         f"{[s.params for s in sizes]}: run every size both ways, in the same order")
    lines = [f"- `{s.model}`, {s.params:,} parameters. On the validation split, against the stretch rung's chosen "
             f"design: {compare(stretch, v)}. On the test set, seeds {_seed_span(list(s.last_accs))}: "
             f"{_on_the_same_seeds(s, list(s.last_accs))}; it {seeds_verdict(s)}. The stretch rung on the same seeds: "
             f"{_on_the_same_seeds(stretch_seeds, list(s.last_accs))}."
             for v, s in zip(validation, sizes, strict=True)]
    held = [s for s in sizes if s.holds]
    if held:
        smallest = min(held, key=lambda s: s.params)
        ending = (f"The smallest size that holds on every seed it ran is `{smallest.model}`, {smallest.params:,} "
                  f"parameters, on {len(smallest.last_accs)} seeds"
                  + ("." if smallest.claimed else ": fewer than the claim's, so it is not claimed (a worst seed "
                     "out of a few is an easier bar than out of many)."))
    else:
        ending = ("None of the smaller sizes holds on every seed it ran, so this method, as it stands, finds no model "
                  f"below the stretch rung ({stretch_seeds.params:,} parameters) that holds; the stretch rung itself "
                  f"{seeds_verdict(stretch_seeds)}.")
    return "\n".join([f"Below the stretch rung, its layout and recipe at {len(sizes)} smaller sizes:", "", *lines,
                      "", ending])
