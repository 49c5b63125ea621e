"""Run lesson notebooks top to bottom, each in a fresh kernel, on copies: which ran through, how long, on what device.

    python3 benchmarks/gpu_notebooks.py --out FILE.json [--executed DIR] NOTEBOOK...
    MNIST_LESSON_SMOKE=1 python3 benchmarks/gpu_notebooks.py --smoke-check --out FILE.json NOTEBOOK...

gpu_check.sh's `notebooks` part runs this on the GPU machine: notebooks 02-08 in smoke mode, then 02 in full, to
prove that no cell of a lesson breaks on a GPU. NOTEBOOK is a file name in notebooks/ (`02_receptive_field.ipynb`)
or its two-digit prefix (`02`). Each runs on a copy in a temporary folder (the checkout's notebooks are never
rewritten: their stored outputs come from the CPU series), in full, or in smoke mode with --smoke-check, on the device
the notebook's own device cell picks. FILE.json is rewritten after every notebook (a stopped run keeps the ones that
finished): per notebook its mode, wall time, whether every cell ran, the first failing cell and its error, and the
device line the notebook printed. The executed copies go to DIR when given. Exit status 1 when a notebook failed.
Needs nbclient and ipykernel (carried as wheels to the device machine; see gpu_check.sh).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, refuse_smoke_mode

from mnist_lesson.records import write_json

TIMEOUT_S = 1800  # per cell


def find_notebook(name: str) -> Path:
    """Return notebooks/NAME, or the one lesson whose file name starts with NAME; SystemExit(2) when none or several."""
    folder = REPO / "notebooks"
    exact = folder / name
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"{name}*.ipynb"))
    if len(found) != 1:
        raise SystemExit(f"gpu_notebooks: {name!r} names {len(found)} notebooks in {folder}; give a file name")
    return found[0]


def printed(nb: Any) -> list[str]:
    """Return the lines the notebook's cells printed that say what it ran on."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            lines += [line for line in text.splitlines() if "running on" in line]
    return lines


def run_one(path: Path, work: Path, smoke: bool) -> tuple[dict[str, Any], Any]:
    """Execute a copy of the notebook at `path` under `work`; return its record and the executed notebook."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    copy = work / path.name
    shutil.copy2(path, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    record: dict[str, Any] = {"notebook": path.name, "mode": "smoke" if smoke else "full",
                              "cells": sum(cell.cell_type == "code" for cell in nb.cells)}
    start = time.perf_counter()
    try:
        client.execute()
        record.update(ok=True, error=None)
    except CellExecutionError as exc:
        failing = next((i for i, cell in enumerate(nb.cells) if any(
            output.get("output_type") == "error" for output in cell.get("outputs", []))), None)
        record.update(ok=False, error={"cell": failing, "ename": exc.ename, "evalue": str(exc.evalue)[:2000]})
    except Exception as exc:  # a kernel that died or never started: the next notebook still runs
        record.update(ok=False, error={"cell": None, "ename": type(exc).__name__, "evalue": str(exc)[:2000]})
    record.update(seconds=round(time.perf_counter() - start, 2), printed=printed(nb))
    return record, nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="file names in notebooks/, or their two-digit prefixes")
    parser.add_argument("--out", type=Path, required=True, help="the JSON of what ran")
    parser.add_argument("--executed", type=Path, help="a folder for the executed copies")
    parser.add_argument("--smoke-check", action="store_true", help="with MNIST_LESSON_SMOKE=1: the notebooks in "
                        "smoke mode (whether every cell runs, not what it measures), into --out outside evidence/")
    args = parser.parse_args(argv)
    smoke = refuse_smoke_mode("a full run of the notebooks was asked for (pass --smoke-check for smoke mode)",
                              args.smoke_check, args.out)
    paths = [find_notebook(name) for name in args.notebooks]
    import nbformat
    import torch

    runs: list[dict[str, Any]] = []
    report = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "smoke": smoke,
              "runs": runs}
    with tempfile.TemporaryDirectory(prefix="gpu_notebooks.") as temporary:
        for path in paths:
            print(f"running {path.name} ({'smoke' if smoke else 'full'}) ...", flush=True)
            record, nb = run_one(path, Path(temporary), smoke)
            runs.append(record)
            write_json(args.out, report)
            if args.executed is not None:
                args.executed.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, args.executed / path.name)
            error = record["error"]
            print(f"notebook {path.name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']:.1f} s"
                  + (f"; cell {error['cell']}: {error['ename']}: {error['evalue'][:300]}" if error else "")
                  + "".join(f"\n  {line}" for line in record["printed"]), flush=True)
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
