"""Render the README's tables of figures from the committed results files under benchmarks/results/.

    python benchmarks/readme_tables.py          # rewrite the tables in README.md
    python benchmarks/readme_tables.py --check  # exit 1 if README.md disagrees with the results

A test runs the check, so a figure in the README can never drift from the file that measured it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from mnist_lesson.results import (
    LAST_EPOCHS,
    TARGET,
    seeds_label,
    seeds_table,
    steady_seconds,
    step_summaries,
    steps_table,
    summarize_seeds,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def data_paths_table(results: Path = RESULTS) -> str:
    """Return the markdown rows of the data-path benchmark: median epoch time per configuration."""
    rows = ["| device | model | configuration | s/epoch (median) | vs seed's DataLoader |", "|---|---|---|---|---|"]
    for path in sorted(results.glob("data_paths_*.json")):
        run = json.loads(path.read_text())
        medians = {name: statistics.median(values) for name, values in run["seconds"].items()}
        baseline = medians["seed: DataLoader"]
        for name, seconds in medians.items():
            rows.append(f"| {run['device']} | {run['model']} | {name} (n={len(run['seconds'][name])}) "
                        f"| {seconds:.1f} | {seconds / baseline:.2f}x |")
    return "\n".join(rows)


def steps_results_table(results: Path = RESULTS) -> str:
    """Return the markdown table of every notebook's recorded full run."""
    return steps_table(step_summaries(results / "steps"))


def seeds_results_table(results: Path = RESULTS) -> str:
    """Return the markdown table of multi-seed verification runs (benchmarks/seeds.py)."""
    rows = ["| model | parameters | seed | last 3 epochs (test acc %) | all >= 99.40 | best | s/run | device |",
            "|---|---:|---:|---|---|---:|---:|---|"]
    for path in sorted(results.glob("seeds_*.json")):
        data = json.loads(path.read_text())
        for run in data["runs"]:
            last = run["test_acc"][-LAST_EPOCHS:]
            last_text = ", ".join(f"{a:.2f}" for a in last)
            rows.append(f"| {seeds_label(data)} | {data['params']:,} | {run['seed']} | {last_text} "
                        f"| {'yes' if min(last) >= TARGET else 'NO'} | {max(run['test_acc']):.2f} "
                        f"| {run['seconds']:.0f} | {run['device']} |")
    return "\n".join(rows)


def ladder_table(results: Path = RESULTS) -> str:
    """Return the markdown summary of every multi-seed file, largest model first: seeds passing, worst epoch."""
    summaries = [summarize_seeds(path) for path in sorted(results.glob("seeds_*.json"))]
    return seeds_table(sorted(summaries, key=lambda s: -s.params))


def speed_table(results: Path = RESULTS) -> str:
    """Return the markdown table of the speed benchmark (benchmarks/speed.py): per device, each configuration."""
    paths = sorted(results.glob("speed_*.json"))
    if not paths:
        return "Not measured yet: run `python benchmarks/speed.py`."
    rows = ["| device | configuration | runs | epochs per run | run s (data loading included) "
            "| s/epoch after the first | vs seed-style DataLoader | test acc after the run |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for path in paths:
        data = json.loads(path.read_text())
        base = statistics.median(steady_seconds(run["epochs"]) for run in data["runs"][data["baseline"]])
        for name, runs in data["runs"].items():
            epoch = statistics.median(steady_seconds(run["epochs"]) for run in runs)
            wall = statistics.median(run["wall"] for run in runs)
            accs = ", ".join(f"{run['test_acc']:.2f}" for run in runs)
            rows.append(f"| {data['device']} | {name} | {len(runs)} | {data['epochs']} | {wall:.1f} | {epoch:.2f} "
                        f"| {epoch / base:.2f}x | {accs} |")
    return "\n".join(rows)


def notebook_times_table(results: Path = RESULTS) -> str:
    """Return the markdown table of full-run wall times per notebook and device (benchmarks/run_notebooks.py)."""
    path = results / "notebook_times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
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


TABLES: dict[str, Callable[[], str]] = {
    "data-paths-benchmark": data_paths_table,
    "steps-results": steps_results_table,
    "seeds-results": seeds_results_table,
    "ladder-results": ladder_table,
    "speed-benchmark": speed_table,
    "notebook-times": notebook_times_table,
}


def render(readme: str) -> str:
    """Return `readme` with every marked table replaced by its freshly rendered version."""
    for marker, table in TABLES.items():
        pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.DOTALL)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no <!-- {marker} --> ... <!-- /{marker} --> block")
        readme = pattern.sub(lambda m, t=table: m.group(1) + t() + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is stale")
    args = parser.parse_args()
    path = REPO / "README.md"
    current = path.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md tables are out of date: run `python benchmarks/readme_tables.py`", file=sys.stderr)
            return 1
        return 0
    path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
