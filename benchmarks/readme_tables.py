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


TABLES: dict[str, Callable[[], str]] = {"data-paths-benchmark": data_paths_table}


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
