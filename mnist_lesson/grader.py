"""Grade a folder of submitted exercise notebooks into a gradebook (grades.csv).

Each submission runs in its own fresh kernel, in its own temporary working folder, in smoke mode,
with a time limit; then a hidden cell loads a private copy of the checks (so a notebook that deletes
or redefines `ex02` and friends changes nothing) and grades the student's variables. Whatever a
student hands in - invalid JSON, an empty file, an exception, an endless loop, a flood of output -
gets its rows with the reason, and the others are graded normally. Rows are appended and flushed
after every student, so a crash of the grader loses at most the notebook in progress, and a rerun
skips the students already graded unless asked to redo them.

Student code runs with the grader's user rights: see the README's "Grading" section.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from mnist_lesson import checks
from mnist_lesson.train import SMOKE_ENV

COLUMNS = ["student", "exercise", "points", "max_points", "message"]
TOTAL = "TOTAL"
MAX_FILE_BYTES = 20 * 1024 * 1024  # a submission larger than this is not run
MAX_OUTPUT_BYTES = 2 * 1024 * 1024  # outputs kept per notebook; the rest is dropped while it runs
GRADING_SECONDS = 300  # time for the hidden grading cell (it trains ex07's model briefly)


@dataclass(frozen=True)
class Row:
    """One line of the gradebook."""

    student: str
    exercise: str
    points: int
    max_points: int
    message: str


def _rows_for_all(student: str, message: str) -> list[Row]:
    return [Row(student, name, 0, ex.max_points, message) for name, ex in checks.EXERCISES.items()]


class _LimitedClient(NotebookClient):
    """A NotebookClient that keeps at most MAX_OUTPUT_BYTES of output, so a flood cannot exhaust memory."""

    kept_bytes = 0
    dropped = False
    timed_out = False

    async def _async_handle_timeout(self, timeout, cell=None):  # type: ignore[no-untyped-def, override]
        self.timed_out = True  # then interrupt the kernel and go on with the next cell
        return await super()._async_handle_timeout(timeout, cell)

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def, override]
        size = len(json.dumps(msg.get("content", {}), default=str))
        hidden = cell_index == len(self.nb.cells) - 1
        if not hidden and self.kept_bytes + size > MAX_OUTPUT_BYTES:
            self.dropped = True
            return None
        self.kept_bytes += size
        return super().output(outs, msg, display_id, cell_index)


def _hidden_cell(nonce: str) -> str:
    # A private copy of the checks module, loaded from its file under a name nobody else knows.
    variables = {name: ex.variable for name, ex in checks.EXERCISES.items()}
    return "\n".join([
        "import builtins as _grader_builtins, importlib.util as _grader_util, json as _grader_json, sys as _grader_sys",
        f"_grader_spec = _grader_util.spec_from_file_location('_grader_checks_{nonce}', {checks.__file__!r})",
        "_grader_checks = _grader_util.module_from_spec(_grader_spec)",
        f"_grader_sys.modules['_grader_checks_{nonce}'] = _grader_checks  # dataclasses look their module up here",
        "_grader_spec.loader.exec_module(_grader_checks)",
        "_grader_ns = _grader_builtins.globals()  # the notebook's namespace, even if `globals` was redefined",
        "_grader_results = {}",
        f"for _grader_name, _grader_var in {variables!r}.items():",
        "    _grader_r = _grader_checks.EXERCISES[_grader_name].grade(_grader_ns.get(_grader_var))",
        "    _grader_results[_grader_name] = [_grader_r.points, _grader_r.max_points, _grader_r.message]",
        f"print({nonce!r} + _grader_json.dumps(_grader_results))",
    ])


def _left(deadline: float) -> int:
    return max(1, int(deadline - time.monotonic()))


def _kill(client: NotebookClient) -> None:
    if client.km is not None:
        client.km.shutdown_kernel(now=True)


def _read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    size = path.stat().st_size
    if size == 0:
        return None, "empty file: nothing to grade; hand in the saved notebook"
    if size > MAX_FILE_BYTES:
        return None, (f"file of {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit; clear the outputs and "
                      "hand it in again")
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # JSON, encoding and schema errors alike
        reason = " ".join(str(exc).split())[:200]
        return None, f"not a valid notebook ({type(exc).__name__}: {reason}); open it in Jupyter, save, hand in again"
    return nb, ""


def grade_notebook(path: Path, timeout: float) -> list[Row]:
    """Run one submission in a fresh kernel and working folder; return its rows, the TOTAL row last."""
    student = path.stem
    nb, problem = _read_submission(path)
    if nb is None:
        rows = _rows_for_all(student, problem)
        return rows + [Row(student, TOTAL, 0, sum(r.max_points for r in rows), problem)]
    for cell in nb.cells:  # stored outputs are never trusted or kept
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nonce = secrets.token_hex(12)
    nb.cells.append(nbformat.v4.new_code_cell(_hidden_cell(nonce)))
    deadline = time.monotonic() + timeout
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"grade-{student}-") as workdir:
        client = _LimitedClient(
            nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": "TimeoutError", "evalue": "time limit reached", "traceback": []},
            timeout_func=lambda cell: GRADING_SECONDS if cell is nb.cells[-1] else _left(deadline),
            resources={"metadata": {"path": workdir}},
        )
        # A watchdog for code that ignores interrupts: past the limit and the grading time, kill the kernel.
        killer = threading.Timer(timeout + GRADING_SECONDS + 30, _kill, args=(client,))
        killer.start()
        try:
            client.execute(env={**os.environ, SMOKE_ENV: "1"})
        except DeadKernelError:
            notes.append("the kernel died or was stopped (endless loop or crash)")
        except Exception as exc:
            notes.append(f"the notebook could not be run: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        finally:
            killer.cancel()
    student_cells = [c for c in nb.cells[:-1] if c.cell_type == "code"]
    errors = [o for c in student_cells for o in c.get("outputs", []) if o.output_type == "error"]
    if client.timed_out:
        notes.append(f"it did not finish within the {timeout:.0f} s limit")
    if errors:
        notes.append(f"{len(errors)} cell(s) raised an error")
    if client.dropped:
        notes.append(f"output beyond {MAX_OUTPUT_BYTES:,} bytes was dropped")
    results = _parse_results(nb.cells[-1], nonce)
    if results is None:
        failed = [f"{o.get('ename')}: {o.get('evalue')}" for o in nb.cells[-1].get("outputs", [])
                  if o.output_type == "error"]
        message = "; ".join(notes + [f"grading failed ({failed[0]})" if failed else "grading produced no results"])
        rows = _rows_for_all(student, message)
    else:
        rows = [Row(student, name, int(points), int(max_points), str(message))
                for name, (points, max_points, message) in results.items()]
    total = Row(student, TOTAL, sum(r.points for r in rows), sum(r.max_points for r in rows),
                "; ".join(notes) or "ran without errors")
    return rows + [total]


def _parse_results(cell: nbformat.NotebookNode, nonce: str) -> dict[str, list] | None:
    for output in cell.get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith(nonce):
                return json.loads(line[len(nonce):])
    return None


def graded_students(gradebook: Path) -> set[str]:
    """Return the students whose TOTAL row is already in the gradebook."""
    if not gradebook.exists():
        return set()
    with open(gradebook, newline="") as f:
        return {row["student"] for row in csv.DictReader(f) if row["exercise"] == TOTAL}


def _drop_students(gradebook: Path, students: set[str]) -> None:
    with open(gradebook, newline="") as f:
        kept = [row for row in csv.DictReader(f) if row["student"] not in students]
    tmp = gradebook.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, gradebook)


def grade_folder(submissions: Path, gradebook: Path, timeout: float = 120, redo: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, tuple[int, int]]:
    """Grade every .ipynb in `submissions` into `gradebook`; return {student: (points, max_points)} of this run."""
    paths = sorted(Path(submissions).glob("*.ipynb"))
    if not paths:
        raise ValueError(f"no .ipynb files in {submissions}")
    done = graded_students(gradebook)
    if redo and done:
        _drop_students(gradebook, {p.stem for p in paths} & done)
        done = graded_students(gradebook)
    todo = [p for p in paths if p.stem not in done]
    if len(todo) < len(paths):
        log(f"skipping {len(paths) - len(todo)} student(s) already in {gradebook} (use --redo to grade again)")
    totals: dict[str, tuple[int, int]] = {}
    new_file = not gradebook.exists()
    for i, path in enumerate(todo, start=1):
        log(f"[{i}/{len(todo)}] grading {path.stem} ({len(todo) - i} left after this one)")
        start = time.monotonic()
        rows = grade_notebook(path, timeout)
        with open(gradebook, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(COLUMNS)
                new_file = False
            writer.writerows([r.student, r.exercise, r.points, r.max_points, r.message] for r in rows)
            f.flush()
            os.fsync(f.fileno())
        total = rows[-1]
        totals[path.stem] = (total.points, total.max_points)
        log(f"    {total.points}/{total.max_points} in {time.monotonic() - start:.0f} s: {total.message}")
    if totals:
        mean = sum(p for p, _ in totals.values()) / len(totals)
        full = sum(p == m for p, m in totals.values())
        log(f"graded {len(totals)} notebook(s): mean {mean:.2f} points, {full} with full marks; gradebook {gradebook}")
    return totals
