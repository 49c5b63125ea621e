"""Run notebooks top to bottom in one fresh kernel each, store their outputs, and record how long each took.

    python benchmarks/run_notebooks.py [NOTEBOOK ...]   # default: the course, in mnist_lesson/course.py's order

This is how the committed outputs are produced: a full run (MNIST_LESSON_SMOKE must be unset), in the
notebooks' own folder, on whatever device `pick_device()` finds. Wall times go to
mnist_lesson/evidence/notebook_times.json, keyed by device, for the README's table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from common import REPO, locked, refuse_smoke_mode
from nbclient import NotebookClient
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from mnist_lesson.course import notebook_paths
from mnist_lesson.device import describe_device, pick_device, set_cpu_threads
from mnist_lesson.records import NOTEBOOK_TIMES, evidence, record_notebook_time

TIMES = evidence(NOTEBOOK_TIMES)


def run_notebook(path: Path, timeout: int = 3600) -> float:
    """Execute the notebook at `path` in place in a fresh kernel; return the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    # A progress bar redraws its line with carriage returns: keep only what a reader would see last on each line.
    CoalesceStreamsPreprocessor().preprocess(nb, {})
    nbformat.write(nb, path)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args()
    refuse_smoke_mode("stored outputs must come from full runs")
    paths = args.notebooks or notebook_paths(REPO)  # the lessons in order, then both exercise notebooks
    set_cpu_threads()  # the rule each notebook's kernel applies, so the label names the threads it computes with
    device = describe_device(pick_device())
    for path in paths:
        print(f"running {path.name} on {device} ...", flush=True)
        seconds = run_notebook(path.resolve())
        # Relative to notebooks/ (student/x.ipynb apart from x.ipynb), else to the repository (instructor/x.ipynb).
        home = REPO / "notebooks" if path.resolve().is_relative_to(REPO / "notebooks") else REPO
        key = str(path.resolve().relative_to(home))
        with locked(TIMES):  # two runners may share the file
            record_notebook_time(device, key, seconds, TIMES)
        print(f"  {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
