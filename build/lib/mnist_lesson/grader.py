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
import signal
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
from mnist_lesson.config import SMOKE_ENV

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

    grading_timed_out = False

    async def _async_handle_timeout(self, timeout, cell=None):  # type: ignore[no-untyped-def, override]
        if cell is self.nb.cells[-1]:
            self.grading_timed_out = True
        else:
            self.timed_out = True
        return await super()._async_handle_timeout(timeout, cell)  # interrupt the kernel, go on

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def, override]
        size = len(json.dumps(msg.get("content", {}), default=str))
        hidden = cell_index == len(self.nb.cells) - 1
        if not hidden and self.kept_bytes + size > MAX_OUTPUT_BYTES:
            self.dropped = True
            return None
        self.kept_bytes += size
        return super().output(outs, msg, display_id, cell_index)


# The checks' source as it was when the grader started: a submission that edits checks.py on disk
# cannot change how it, or anyone after it, is graded.
_CHECKS_SOURCE = Path(checks.__file__).read_text()


def _hidden_cell(nonce: str) -> str:
    # A private copy of the checks module, built from the source read at start-up under a fresh name.
    variables = {name: ex.variable for name, ex in checks.EXERCISES.items()}
    return "\n".join([
        "import builtins as _grader_builtins, json as _grader_json, sys as _grader_sys, types as _grader_types",
        "_grader_checks = _grader_types.ModuleType('_grader_checks')",
        "_grader_sys.modules['_grader_checks'] = _grader_checks  # dataclasses look their module up here",
        f"exec(compile({_CHECKS_SOURCE!r}, 'mnist_lesson/checks.py', 'exec'), _grader_checks.__dict__)",
        "_grader_ns = _grader_builtins.globals()  # the notebook's namespace, even if `globals` was redefined",
        "_grader_results = {}",
        f"for _grader_name, _grader_var in {variables!r}.items():",
        "    _grader_r = _grader_checks.EXERCISES[_grader_name].grade(_grader_ns.get(_grader_var))",
        "    _grader_results[_grader_name] = [_grader_r.points, _grader_r.max_points, _grader_r.message[:500]]",
        f"print({nonce!r} + _grader_json.dumps(_grader_results))",
    ])


def _left(deadline: float) -> int:
    return max(1, int(deadline - time.monotonic()))


def _kill(client: NotebookClient) -> None:
    # For code that ignores interrupts: kill the kernel process outright; nbclient then stops with
    # DeadKernelError. (The kernel manager's own shutdown is a coroutine of another thread's loop.)
    provisioner = getattr(client.km, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, f"the file cannot be read ({type(exc).__name__}: {exc}); hand it in again"
    if size == 0:
        return None, "empty file: nothing to grade; hand in the saved notebook"
    if size > MAX_FILE_BYTES:
        return None, (f"file of {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit; clear the outputs and "
                      "hand it in again")
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        for cell in nb.cells:  # stored outputs are never trusted or kept, so never judged either
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
        nbformat.validate(nb)
    except Exception as exc:  # JSON, encoding and schema errors alike
        reason = " ".join(str(exc).split())[:200]
        return None, f"not a valid notebook ({type(exc).__name__}: {reason}); open it in Jupyter, save, hand in again"
    return nb, ""


def _student_env() -> dict[str, str]:
    # Smoke mode, and no variables that look like credentials: student code sees the rest.
    secret = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
    env = {k: v for k, v in os.environ.items() if not any(word in k.upper() for word in secret)}
    return {**env, SMOKE_ENV: "1"}


def grade_notebook(path: Path, timeout: float, grading_seconds: float = GRADING_SECONDS) -> list[Row]:
    """Run one submission in a fresh kernel and working folder; return its rows, the TOTAL row last."""
    student = path.stem
    nb, problem = _read_submission(path)
    if nb is None:
        rows = _rows_for_all(student, problem)
        return rows + [Row(student, TOTAL, 0, sum(r.max_points for r in rows), problem)]
    nonce = secrets.token_hex(12)
    nb.cells.append(nbformat.v4.new_code_cell(_hidden_cell(nonce)))
    deadline = time.monotonic() + timeout
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"grade-{student}-") as workdir:
        client = _LimitedClient(
            nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": "TimeoutError", "evalue": "time limit reached", "traceback": []},
            timeout_func=lambda cell: int(grading_seconds) if cell is nb.cells[-1] else _left(deadline),
            resources={"metadata": {"path": workdir}},
        )
        # A watchdog for code that ignores interrupts: past the limit and the grading time, kill the kernel.
        killer = threading.Timer(timeout + grading_seconds + 10, _kill, args=(client,))
        killer.start()
        try:
            client.execute(env=_student_env())
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
    if client.grading_timed_out:
        notes.append(f"grading its answers took longer than {grading_seconds:.0f} s")
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
    """Return the grading cell's results (the last marked line), or None when missing or malformed."""
    lines = [line for output in cell.get("outputs", []) for line in str(output.get("text", "")).splitlines()
             if line.startswith(nonce)]
    if not lines:
        return None
    try:
        results = json.loads(lines[-1][len(nonce):])
    except ValueError:
        return None
    if not isinstance(results, dict) or set(results) != set(checks.EXERCISES):
        return None
    for name, value in results.items():
        maximum = checks.EXERCISES[name].max_points
        if not (isinstance(value, list) and len(value) == 3 and value[0] in range(maximum + 1)
                and value[1] == maximum and isinstance(value[2], str)):
            return None
    return results


def _read_gradebook(gradebook: Path) -> list[dict[str, str]]:
    if not gradebook.exists() or gradebook.stat().st_size == 0:
        return []
    with open(gradebook, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"{gradebook} is not a gradebook (its header is {reader.fieldnames}, expected "
                             f"{COLUMNS}); choose another --out")
        return list(reader)


def graded_students(gradebook: Path) -> set[str]:
    """Return the students whose TOTAL row is already in the gradebook."""
    return {row["student"] for row in _read_gradebook(gradebook) if row["exercise"] == TOTAL}


def _drop_students(gradebook: Path, students: set[str]) -> None:
    kept = [row for row in _read_gradebook(gradebook) if row["student"] not in students]
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
    from mnist_lesson.data import ensure_mnist

    ensure_mnist(log=log)  # a missing data set is the instructor's problem, never blamed on a student
    done = set() if redo else graded_students(gradebook)
    todo = [p for p in paths if p.stem not in done]
    if gradebook.exists():  # rows of students about to be graded (a redo, or a run cut short) go first
        _drop_students(gradebook, {p.stem for p in todo})
    if len(todo) < len(paths):
        log(f"skipping {len(paths) - len(todo)} student(s) already in {gradebook} (use --redo to grade again)")
    totals: dict[str, tuple[int, int]] = {}
    new_file = not gradebook.exists() or gradebook.stat().st_size == 0
    for i, path in enumerate(todo, start=1):
        log(f"[{i}/{len(todo)}] grading {path.stem} ({len(todo) - i} left after this one)")
        start = time.monotonic()
        try:
            rows = grade_notebook(path, timeout)
        except Exception as exc:  # one student's notebook never stops the others being graded
            reason = f"the grader failed on this notebook ({type(exc).__name__}: {exc}); grade it by hand"
            rows = _rows_for_all(path.stem, reason)
            rows.append(Row(path.stem, TOTAL, 0, sum(r.max_points for r in rows), reason))
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
