"""Benchmark: how long the grader takes per submission with one and with two kernels at once, side by side.

    python benchmarks/grading.py [--copies 100] [--jobs 1 2] [--isolation none namespaces] [--timeout 120]
                                 [--notebook FILE] [--out FILE]

The submissions are copies of a mixed set built from the solution notebook (instructor/exercises.ipynb, or
notebooks/exercises.ipynb before it moved): a correct one, a partly right one (its first answer emptied), one
that raises (an extra cell `1 / 0`) and an invalid file, in turn, each named by its own student (the student
key set to its file name). One untimed submission first warms the imports and caches; then every jobs setting
grades the same folder into a fresh gradebook in this one run, so the times compare on the same machine and
load. The table gives wall time and seconds per submission, with the points each kind got as a check that the
grading was real. With several --isolation modes, every (mode, jobs) pair grades the same folder in this run, so
the cost of isolating each kernel (its own namespaces, a tmpfs over the grader's files, a private package copy) is
measured against no isolation side by side. The grader always runs notebooks in smoke mode, so this benchmark
does not care whether MNIST_LESSON_SMOKE is set. Results go to mnist_lesson/evidence/grading_times.json, keyed by
the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch
from common import REPO, locked, set_threads, where

from mnist_lesson.grading import grader
from mnist_lesson.grading.contract import CHECKS_MODULE, Checks
from mnist_lesson.records import GRADING_TIMES, evidence, record_grading_times

TIMES = evidence(GRADING_TIMES)
KINDS = ("correct", "partly", "raises", "invalid")


def default_notebook() -> Path:
    """Return the solution notebook: instructor/exercises.ipynb, or where it was before it moved."""
    return next((p for p in (REPO / "instructor" / "exercises.ipynb", REPO / "notebooks" / "exercises.ipynb")
                 if p.exists()), REPO / "instructor" / "exercises.ipynb")


def submission(solution: nbformat.NotebookNode, kind: str, student: str, checks: Checks) -> str:
    """Return the text of one submission of `kind`, handed in by `student`."""
    if kind == "invalid":
        return '{"cells": ['
    nb = nbformat.from_dict(solution)
    variables = {ex.name: ex.variable for ex in checks.exercises}
    emptied = False
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        if grade_id == "student":
            cell.source = f"STUDENT = {student!r}"
        elif kind == "partly" and not emptied and grade_id.removesuffix("-answer") in variables:
            cell.source = f"{variables[grade_id.removesuffix('-answer')]} = None"
            emptied = True
    if kind == "raises":
        nb.cells.append(nbformat.v4.new_code_cell("1 / 0"))
    return nbformat.writes(nb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=100, help="submissions in the folder (default 100)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="kernels at once to compare (1 2)")
    parser.add_argument("--isolation", nargs="+", default=["none"], choices=["none", "namespaces"],
                        help="isolation modes to compare (default: none)")
    parser.add_argument("--timeout", type=float, default=120, help="the grader's --timeout (default 120)")
    parser.add_argument("--notebook", type=Path, default=default_notebook(), help="the solution notebook")
    parser.add_argument("--checks", default=CHECKS_MODULE, help="the checks module (tests use a stand-in)")
    parser.add_argument("--out", type=Path, default=TIMES, help="results file (default: the evidence folder's)")
    parser.add_argument("--no-data-check", action="store_true", help="skip the grader's MNIST check (tests)")
    args = parser.parse_args()
    set_threads(None)
    checks = Checks.load(args.checks)
    solution = nbformat.read(args.notebook, as_version=4)
    machine = f"{where(torch.device('cpu'))}, {os.cpu_count()} cores"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"grading {args.copies} submissions ({', '.join(KINDS)} in turn) with {args.jobs} kernel(s) at once, "
          f"isolation {args.isolation}, on {machine}; load average {load:.2f} at the start", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="grading-benchmark-") as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        for i in range(args.copies):
            kind = KINDS[i % len(KINDS)]
            student = f"{kind}-{i:03d}"
            (folder / f"{student}.ipynb").write_text(submission(solution, kind, student, checks))
        # Untimed warm-up: the first kernels pay for cold imports and compiled caches, which no setting should carry.
        warm = Path(tmp) / "warm-up"
        warm.mkdir()
        (warm / "correct-warm.ipynb").write_text(submission(solution, "correct", "correct-warm", checks))
        for mode in args.isolation:
            grader.grade_folder(warm, Path(tmp) / f"warm-up-{mode}.csv", grader.GradingLimits(timeout=args.timeout),
                                checks=checks, check_data=not args.no_data_check, isolation=mode,
                                log=lambda message: None)
        for mode in args.isolation:
            for jobs in args.jobs:
                start = time.perf_counter()
                summary = grader.grade_folder(folder, Path(tmp) / f"grades-{mode}-jobs{jobs}.csv",
                                              grader.GradingLimits(timeout=args.timeout), jobs=jobs, checks=checks,
                                              check_data=not args.no_data_check, isolation=mode,
                                              log=lambda message: None)
                wall = time.perf_counter() - start
                points = {kind: statistics.mean(p for s, (p, _) in summary.totals.items() if s.startswith(kind))
                          for kind in KINDS if any(s.startswith(kind) for s in summary.totals)}
                runs.append({"isolation": mode, "jobs": jobs, "submissions": args.copies, "wall_s": round(wall, 1),
                             "s_per_submission": round(wall / args.copies, 2), "graded": len(summary.totals),
                             "failed": len(summary.failed), "mean_points": points, "max_points": checks.full})
                print(f"  isolation {mode}, jobs {jobs}: {wall:.1f} s (load average {os.getloadavg()[0]:.2f} at the "
                      "end)", flush=True)
    base = runs[0]["wall_s"]
    print(f"\n| isolation | jobs | submissions | wall s | s/submission | vs the first row | mean points "
          f"({', '.join(KINDS)}) of {checks.full} |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for run in runs:
        means = ", ".join(f"{run['mean_points'].get(kind, float('nan')):.1f}" for kind in KINDS)
        print(f"| {run['isolation']} | {run['jobs']} | {run['submissions']} | {run['wall_s']:.1f} | "
              f"{run['s_per_submission']:.2f} | {base / run['wall_s']:.2f}x | {means} |")
    print(f"\non {machine}")
    with locked(args.out):
        record_grading_times(machine, runs, args.out)
    print(f"saved in {args.out}")
    return 0 if all(run["failed"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
