"""Grade a folder of submitted exercise notebooks: a long gradebook (grades.csv), a wide CSV and feedback files.

Each submission runs twice, each time in a fresh kernel of its own (sandbox.py: time limit, resource limits,
no network where allowed, every process it started killed at the end). First the whole notebook as handed in:
which cells raised, whether it kept to the time limit, and how many hints its checks gave. Then a clean kernel
runs only `STUDENT = key`, the exercises' import cell (PRELUDE) and the student's answer cells, around a hidden
grading step built from a private copy of the exercises' source read when the grader started; the results come
back in a file, not in the output. The interface with the exercises is fixed in contract.py (issue 14).

Each finished student is recorded whole in the gradebook (gradebook.py: the grader's own record, and the files
written from it under a lock), so a Ctrl-C records nothing for the students in progress. What is and is not
protected: docs/grading.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import queue
import re
import secrets
import site
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

import mnist_lesson
from mnist_lesson.colab import reported_version
from mnist_lesson.config import SMOKE_ENV, UsageError
from mnist_lesson.data import data_root, ensure_mnist
from mnist_lesson.device import default_threads
from mnist_lesson.files import atomic_write
from mnist_lesson.grading import lms, sandbox
from mnist_lesson.grading.contract import TOTAL, UNANSWERED, Checks, Row, file_digest
from mnist_lesson.grading.gradebook import Gradebook, OutputFailed, check_output
from mnist_lesson.grading.isolation import MAX_MEMORY_BYTES, MODES, NO_ISOLATION, Isolation, package_source, resolve
from mnist_lesson.grading.sandbox import Reply, Sandbox, Step, StepResult, Stopped

SUFFIX = ".ipynb"  # matched whatever its case (W.IPYNB is a submission too)
MAX_FILE_BYTES = 20 * 1024 * 1024  # a submission larger than this is not run
MAX_RESULTS_BYTES = 1024 * 1024  # of the grading step's results file
REPORT_SECONDS = 30.0  # for the hidden cell that reads hint use in the student's own kernel
SETUP_SECONDS = 600.0  # for the hidden first cell of the grading kernel (no student code has run yet)


@dataclass(frozen=True)
class GradingLimits:
    """Wall-time limits of grading one submission, in seconds."""

    timeout: float = 120.0  # the notebook as handed in, first cell to last (and again for its answer cells alone)
    grading: float = 300.0  # the hidden grading step (one check trains a small model briefly)
    grace: float = 10.0  # from the interrupt at a limit to the kill of code that ignores it (a slow CPU
    # can take seconds to format the first traceback)

    def __post_init__(self) -> None:
        for name in ("timeout", "grading", "grace"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"the {name} limit must be a finite number of seconds above 0, not {value!r}")



class GraderFailure(RuntimeError):
    """Grading failed for a reason of the grading machine, not of the submission: nothing is recorded."""


class EnvironmentChanged(GraderFailure):
    """Files every kernel imports changed while grading: the whole run stops, nothing more is recorded."""


def code_digests() -> dict[str, str]:
    """Return {path: sha256} of what every kernel runs at start-up and the checks import: this package's modules,
    and the .pth files and site/user customization of the Python environment."""
    paths = sorted(Path(mnist_lesson.__file__).parent.rglob("*.py"))
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        if os.path.isdir(folder):
            paths += sorted(Path(folder).glob("*.pth"))
            paths += [Path(folder) / n for n in ("sitecustomize.py", "usercustomize.py") if (Path(folder) / n).exists()]
    return {str(path): file_digest(path) or "" for path in paths}


def _check_code(before: Mapping[str, str] | None, student: str) -> None:
    if before is None:
        return
    now = code_digests()
    changed = sorted(path for path in set(before) | set(now) if before.get(path) != now.get(path))
    if changed:
        raise EnvironmentChanged(
            f"{', '.join(changed[:3])}{' and more' if len(changed) > 3 else ''} changed while {student} was graded: a "
            "submission may have modified the code every kernel runs. Restore it (git status, pip), read that "
            "notebook, and grade in a container with the environment read-only; if you edited it yourself, run again")


# --- submissions: names, files, cells -----------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One file to grade and the student it is recorded under."""

    path: Path
    student: str


def student_name(file_name: str) -> str:
    """Return the student a file name stands for: its stem, bytes that are not UTF-8 and unprintables escaped."""
    stem = file_name[:-len(SUFFIX)] if file_name.lower().endswith(SUFFIX) else file_name
    text = os.fsencode(stem).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def find_submissions(folder: Path, roster: Mapping[str, lms.Student] | None = None,
                     log: Callable[[str], None] = print) -> list[Submission]:
    """Return the submissions in `folder` (every *.ipynb whatever its case, hidden files skipped), by file name; an
    LMS download's name (Canvas, Moodle) is read through `roster` to the student's key (lms.lms_student)."""
    names = sorted(os.fsdecode(raw) for raw in os.listdir(os.fsencode(folder))  # bytes: any name can be listed
                   if not raw.startswith(b".") and raw.lower().endswith(SUFFIX.encode()))
    stems = [student_name(name) for name in names]
    mapped, unknown = 0, []
    for i, stem in enumerate(stems):
        found = lms.lms_student(stem, roster or {})
        if found is not None:
            stems[i], mapped = found[0], mapped + 1
        elif lms.looks_like_lms(stem):
            unknown.append(stem)
    if mapped:
        log(f"{mapped} file(s) named as LMS downloads were graded under their student's key from the roster")
    if unknown:
        log(f"{len(unknown)} file(s) look like {lms.looks_like_lms(unknown[0])} downloads but "
            + ("no --roster was given" if roster is None else "the roster does not list them")
            + f" ({', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}): they are graded under their whole "
            "file name, whose numbers are not the student's; pass a --roster with their `id` (Canvas) or `name` "
            "(Moodle) and grade them with --redo")
    # Two files for one student (alice.ipynb, alice.IPYNB): each is recorded under its whole escaped file name.
    return [Submission(Path(folder) / name, stem if stems.count(stem) == 1 else student_name(name + SUFFIX))
            for name, stem in zip(names, stems, strict=True)]


def read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """Return the notebook at `path` with its stored outputs cleared, or None and why it cannot be graded.

    The reasons never quote the file: a notebook is never followed through a symbolic link, and a parse
    error names where it is, not what is there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a fifo named x.ipynb must not block us
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "a symbolic link, not a notebook: not graded; hand in the notebook file itself"
        return None, f"the file cannot be read ({exc.strerror}); hand it in again"
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None, "not a regular file (a folder, a pipe or a device): not graded; hand in the notebook file"
    with os.fdopen(fd, "rb") as f:
        if info.st_size == 0:
            return None, "empty file: nothing to grade; hand in the saved notebook"
        if info.st_size > MAX_FILE_BYTES:
            return None, (f"file of {info.st_size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit; clear the "
                          "outputs and hand it in again")
        data = f.read(MAX_FILE_BYTES + 1)
    try:
        content = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"not a notebook: not UTF-8 text (byte {exc.start:,}); open it in Jupyter, save, hand in again"
    except json.JSONDecodeError as exc:
        return None, (f"not a valid notebook: its JSON breaks at line {exc.lineno}, column {exc.colno}; open it in "
                      "Jupyter, save, hand in again")
    if not isinstance(content, dict) or "cells" not in content and "worksheets" not in content:
        return None, "not a notebook (JSON, but not a notebook's); open it in Jupyter, save, hand in again"
    try:
        nb = nbformat.reads(json.dumps(content), as_version=4)
        for cell in nb.cells:  # stored outputs are never trusted or kept, so never judged either
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
        nbformat.validate(nb)
    except Exception as exc:  # schema and conversion errors alike; their text may quote the file, so it is not kept
        return None, (f"not a valid notebook ({type(exc).__name__}: it does not follow the notebook format); open it "
                      "in Jupyter, save, hand in again")
    return nb, ""


_ANSWER_LINE = re.compile(r"#\s*answer\s+(\w+)", re.IGNORECASE)  # "# Answer ex02: assign `block` ..."


def answer_cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """Return (label, source) of the answer cells: nbgrader grade_id "<name>-answer", or first line "# Answer exNN"."""
    found = []
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        first = _ANSWER_LINE.match(cell.source.lstrip().split("\n", 1)[0])
        if isinstance(grade_id, str) and grade_id.endswith("-answer"):
            found.append((grade_id[:-len("-answer")], cell.source))
        elif first:
            found.append((first.group(1), cell.source))
    return found


# --- the hidden cells ----------------------------------------------------------------------------------------

# In the student's own kernel, after the notebook: how often hint() ran, and the key the notebook worked with.
_REPORT = '''
def _grader_report(path, module):
    import json, sys
    namespace = sys._getframe(1).f_globals
    checks = sys.modules.get(module)
    report = {"imported": checks is not None}
    if checks is not None:
        report["hints"] = {name: getattr(ex, "hints_used", None) for name, ex in checks.EXERCISES.items()}
        try:
            report["key"] = checks.student_key(namespace)
        except Exception:
            pass
    with open(path, "w") as f:
        json.dump(report, f, default=repr)
'''

# The grader's private copy of the checks: each source (the checks module last) exec'd into a fresh module, whose
# `from <a copied module> import ...` gets that module's copy. Answer cells that later change the public modules
# (a class, a function, EXERCISES) reach none of it.
PRIVATE_COPY = '''
def private_copy(sources, prefix):
    import builtins, sys, types
    real_import, copies = builtins.__import__, {}

    def private_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and fromlist and name in copies:
            return copies[name]
        return real_import(name, globals, locals, fromlist, level)

    private_builtins = {**builtins.__dict__, "__import__": private_import}
    for number, (name, source) in enumerate(sources):
        module = types.ModuleType(f"{prefix}{number}")
        module.__dict__["__builtins__"] = private_builtins
        sys.modules[module.__name__] = module  # dataclasses look their module up while a class is built
        try:
            exec(compile(source, f"{name} (the grader's private copy)", "exec"), module.__dict__)
        finally:
            del sys.modules[module.__name__]
        copies[name] = module
    return module
'''

# In the clean grading kernel, before any student code: build the private checks and capture what the grading
# step needs. It runs with a copy of the builtins taken now, so answer cells that later replace print, exec,
# json.dumps, str or isinstance change nothing here; results go to a file opened now, never to the output.
_SETUP = PRIVATE_COPY + '''
def setup(sources, prefix, channel, key, namespace):
    import json, os
    checks = private_copy(sources, prefix)
    graders = [(exercise, ex.variable, ex.grade) for exercise, ex in checks.EXERCISES.items()]
    fd = os.open(channel, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    dumps, write, close = json.dumps, os.write, os.close

    def finish():
        for exercise, variable, grade in graders:  # one line each, so a kill keeps the exercises already graded
            try:
                r = grade(namespace.get(variable), key)
                line = {"exercise": exercise, "points": r.points, "max_points": r.max_points, "message": str(r.message)}
            except Exception as exc:
                line = {"exercise": exercise, "error": type(exc).__name__}
            write(fd, (dumps(line) + "\\n").encode())
        close(fd)

    return finish
'''


def _setup_cell(checks: Checks, key: str, channel: Path, nonce: str) -> str:
    return "\n".join([
        "import builtins as _grader_builtins",
        "_grader_env = {'__builtins__': dict(_grader_builtins.__dict__)}",
        f"exec({_SETUP!r}, _grader_env)",
        f"_grader_{nonce} = _grader_env['setup']({checks.sources!r}, '_grader_checks_{nonce}_', {str(channel)!r}, "
        f"{key!r}, globals())",
        "del _grader_builtins, _grader_env",
    ])


def _read_report(path: Path, checks: Checks) -> dict[str, object] | None:
    """Return {"hints": {name: int}, "key": str | None} from the student's kernel, or None when unreadable."""
    try:
        with open(path, "rb") as f:
            report = json.loads(f.read(MAX_RESULTS_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    hints: dict[str, int] = {}
    if report.get("imported"):
        given = report.get("hints")
        if not isinstance(given, dict):
            return None
        for ex in checks.exercises:
            value = given.get(ex.name)
            if type(value) is not int or not 0 <= value <= 10_000:
                return None
            hints[ex.name] = value
    else:  # the notebook never imported the checks: no hint was shown
        hints = {ex.name: 0 for ex in checks.exercises}
    key = report.get("key")
    return {"hints": hints, "key": key if isinstance(key, str) and len(key) <= 200 else None}


def _read_results(channel: Path, checks: Checks) -> dict[str, tuple[int, str]]:
    """Return {exercise: (points, message)} from the grading step's file: only complete, well-formed lines."""
    maxima = {ex.name: ex.max_points for ex in checks.exercises}
    try:
        with open(channel, "rb") as f:
            data = f.read(MAX_RESULTS_BYTES)
    except OSError:
        return {}
    results: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    for line in data.split(b"\n")[:-1]:  # a last line without its newline is torn: never taken
        try:
            item = json.loads(line)
        except ValueError:
            continue
        name = item.get("exercise") if isinstance(item, dict) else None
        if name not in maxima:
            continue
        if name in seen:  # a second result for one exercise was not written by the grading step
            results[name] = (0, "the grading step reported this exercise twice: not graded; read the notebook")
            continue
        seen.add(name)
        points, maximum, message = item.get("points"), item.get("max_points"), item.get("message")
        if "error" in item:
            results[name] = (0, f"the check itself failed ({str(item['error'])[:100]}); grade it by hand")
        elif type(points) is int and maximum == maxima[name] and 0 <= points <= maximum and isinstance(message, str):
            results[name] = (points, message[:500])
    return results


# --- one submission ------------------------------------------------------------------------------------------


def _student_env(jobs: int) -> dict[str, str]:
    # Smoke mode, no variables that look like credentials, and torch threads as device.default_threads picks them
    # for the kernels running at once (one each on a CPU that is already busy).
    secret = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
    env = {k: v for k, v in os.environ.items() if not any(word in k.upper() for word in secret)}
    env.setdefault("OMP_NUM_THREADS", str(default_threads(jobs)))
    return {**env, SMOKE_ENV: "1"}


def _needed_folders() -> list[Path]:
    """Return the folders a kernel needs even inside a hidden one: the data, Python, and PYTHONPATH's entries."""
    source = package_source()
    extra = [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [data_root(), Path(sys.prefix), Path(sys.base_prefix)] + [
        p for p in extra if not any(p.resolve() == s or p.resolve().is_relative_to(s) for s in source)]


def _errors(replies: list[Reply], interrupted: bool) -> list[tuple[int, Reply]]:
    """Return (1-based cell number, reply) of the cells that raised, not counting the one the limit interrupted."""
    found = [(i, r) for i, r in enumerate(replies, start=1) if r.status == "error"]
    if interrupted and found and found[-1][0] == len(replies) and found[-1][1].ename == "KeyboardInterrupt":
        found.pop()
    return found


def _how_it_stopped(result: StepResult, seconds: float, prefix: str, what: str) -> str:
    left = result.planned - len(result.replies)
    if result.stopped == "time":
        return f"{prefix}{what} did not finish within the {seconds:g} s limit ({left} cell(s) not run)"
    if result.stopped == "killed":
        return (f"{prefix}{what} did not finish within the {seconds:g} s limit and ignored the interrupt: the kernel "
                f"was killed ({left - 1} cell(s) not run)")
    if result.stopped == "died":
        return (f"{prefix}the kernel stopped by itself in cell {len(result.replies) + 1} of {what} (exit(), a crash "
                f"or too much memory; {left - 1} cell(s) not run)")
    return ""


def _run_as_handed_in(nb: nbformat.NotebookNode, checks: Checks, key: str, limits: GradingLimits,
                      env: dict[str, str], stop: threading.Event | None,
                      isolation: Isolation) -> tuple[list[str], dict[str, int] | None]:
    """Run the whole notebook in its own kernel; return notes on how it ran and the hints used (None: unknown)."""
    sources = [cell.source for cell in nb.cells if cell.get("cell_type") == "code"]
    with Sandbox(env, stop, limits.grace, isolation) as box:
        report_path = box.private / "report.json"
        run, _ = box.run([Step("notebook", sources, limits.timeout),
                          Step("report", [_REPORT + f"_grader_report({str(report_path)!r}, {checks.module!r})"],
                               REPORT_SECONDS)])
        report = _read_report(report_path, checks)
    notes = [note for note in [_how_it_stopped(run, limits.timeout, "", "the notebook")] if note]
    errors = _errors(run.replies, run.stopped == "time")
    if errors:
        notes.append(f"{len(errors)} cell(s) raised an error (first: code cell {errors[0][0]}, "
                     f"{errors[0][1].describe()})")
    if report is None:
        notes.append("hint use could not be read")
        return notes, None
    if report["key"] not in (None, key):
        notes.append(f"the notebook worked with student key {report['key']!r} but was graded as {key!r} (from its "
                     "file name): numbers derived from another key do not match")
    return notes, report["hints"]  # type: ignore[return-value]


def _run_answers(answers: list[tuple[str, str]], checks: Checks, key: str, limits: GradingLimits,
                 env: dict[str, str], stop: threading.Event | None,
                 isolation: Isolation) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Grade the answer cells in a clean kernel; return {exercise: (points, message)}, and notes on how it went."""
    nonce = secrets.token_hex(8)
    with Sandbox(env, stop, limits.grace, isolation) as box:
        channel = box.private / "results.jsonl"
        setup, ran, graded = box.run([
            Step("setup", [_setup_cell(checks, key, channel, nonce)], SETUP_SECONDS),
            Step("answers", [f"STUDENT = {key!r}", checks.prelude] + [source for _, source in answers], limits.timeout),
            Step("grading", [f"_grader_{nonce}()"], limits.grading)])
        results = _read_results(channel, checks)
    if setup.stopped or setup.replies[0].status != "ok":
        failure = setup.replies[0].describe() if setup.replies else setup.stopped or "no reply"
        raise GraderFailure(f"the grading step could not be set up ({failure})")
    notes = [note for note in [_how_it_stopped(ran, limits.timeout, "grading: ", "the answer cells")] if note]
    labels = ["STUDENT", "the import cell"] + [f"answer cell {label}" for label, _ in answers]
    raised: dict[str, str] = {}  # exercise -> the error its answer cell raised
    for number, reply in _errors(ran.replies, ran.stopped == "time"):
        notes.append(f"grading: {labels[number - 1]} raised {reply.describe()}")
        if number > 2:
            raised.setdefault(answers[number - 3][0], reply.describe())
    if any(reply.status == "error" for reply in ran.replies[2:]):
        notes.append("grading runs only the answer cells: keep everything an answer needs inside its answer cell")
    if graded.stopped in ("time", "killed"):
        reason = f"not graded: checking took longer than the {limits.grading:g} s limit"
    elif graded.stopped:
        reason = "not graded: the grading kernel stopped (exit(), a crash or too much memory)"
    elif graded.replies and graded.replies[0].status == "error":
        reason = f"not graded: the grading step failed ({graded.replies[0].describe()}); did an answer cell interfere?"
    else:
        reason = "not graded: the grading step gave no result"
    for ex in checks.exercises:
        results.setdefault(ex.name, (0, reason))
        points, message = results[ex.name]
        if ex.name in raised and message.startswith(UNANSWERED):  # say what happened: it raised, it was not blank
            results[ex.name] = (points, f"your answer cell raised {raised[ex.name]} when run alone, so `{ex.variable}` "
                                        "was never set; fix the error (everything the answer needs must be in its "
                                        "answer cell) and run it again")
    return results, notes


OTHER_VERSION = "the notebook ran mnist_lesson "  # how the warning about another package version starts


def version_note(nb: nbformat.NotebookNode) -> str | None:
    """Return a warning when the submission's stored outputs report another mnist_lesson version than the grader's."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        text = "".join(str(out.get("text", "")) for out in cell.get("outputs", []) if isinstance(out, dict))
        ran = reported_version(text)
        if ran is not None:
            return None if ran == mnist_lesson.__version__ else (
                f"{OTHER_VERSION}{ran[:40]}, but it was graded with {mnist_lesson.__version__}: the "
                "checks the student saw may differ from these (the notebook's setup cell installs the release "
                "named in mnist_lesson/colab.py)")
    return None


def _same_for_all(checks: Checks, student: str, message: str, hints: Mapping[str, int] | None = None) -> list[Row]:
    rows = [Row(student, ex.name, 0, ex.max_points, None if hints is None else hints[ex.name], message)
            for ex in checks.exercises]
    return rows + [Row(student, TOTAL, 0, checks.full, None if hints is None else sum(hints.values()), message)]


def grade_notebook(path: Path, student: str | None = None, checks: Checks | None = None,
                   limits: GradingLimits = GradingLimits(), stop: threading.Event | None = None,
                   jobs: int = 1, digests: Mapping[str, str] | None = None,
                   isolation: Isolation = NO_ISOLATION) -> list[Row]:
    """Grade one submission; return its rows, one per exercise and the TOTAL row last.

    Raises Stopped when `stop` is set while it runs, GraderFailure for a failure of the grading machine, and
    EnvironmentChanged when `digests` (code_digests() from before) no longer match after one of its kernels."""
    checks = checks or Checks.load()
    student = student if student is not None else student_name(path.name)
    nb, problem = read_submission(path)
    if nb is None:
        return _same_for_all(checks, student, problem)
    key = checks.student_key({"STUDENT": student})
    env = _student_env(jobs)
    try:
        with sandbox.reaping():
            notes, hints = _run_as_handed_in(nb, checks, key, limits, env, stop, isolation)
            _check_code(digests, student)  # before the grading kernel imports any of it
            answers = answer_cells(nb)
            if not answers:
                message = ("the answer cells could not be found (no cell has nbgrader metadata '<exercise>-answer' "
                           "or a first line '# Answer exNN'): not graded; grade it by hand")
                return _same_for_all(checks, student, "; ".join([message] + notes), hints)
            results, grading_notes = _run_answers(answers, checks, key, limits, env, stop, isolation)
            _check_code(digests, student)
    except sandbox.KernelStartError as exc:
        raise GraderFailure(str(exc)) from exc
    rows = [Row(student, ex.name, results[ex.name][0], ex.max_points, None if hints is None else hints[ex.name],
                results[ex.name][1]) for ex in checks.exercises]
    total_hints = None if hints is None else sum(hints.values())
    version = version_note(nb)
    message = "; ".join(notes + grading_notes + ([version] if version else [])) or "ran without errors"
    return rows + [Row(student, TOTAL, sum(r.points for r in rows), checks.full, total_hints, message)]


# --- a folder of submissions ---------------------------------------------------------------------------------


@dataclass
class GradingSummary:
    """What one run of grade_folder did."""

    totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # student: (points, max_points), this run
    failed: dict[str, str] = field(default_factory=dict)  # student: why the grader failed (nothing recorded)
    skipped: int = 0  # already graded
    changed: int = 0  # times the gradebook was found changed behind the grader's back


def _stop_workers(threads: list[threading.Thread], stop: threading.Event, log: Callable[[str], None]) -> None:
    stop.set()
    end = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < end:
        try:
            for t in threads:
                t.join(timeout=0.2)
        except KeyboardInterrupt:
            log("stopping: the kernels are being killed, a moment please")


def grade_folder(submissions: Path, gradebook: Path, limits: GradingLimits = GradingLimits(), *, jobs: int = 1,
                 redo: bool = False, wide: Path | None = None, feedback: Path | None = None,
                 checks: Checks | None = None, check_data: bool = True, bom: bool = False,
                 lms_export: str | None = None, roster: Path | None = None, assignment: str = "MNIST exercises",
                 isolation: str = "auto", memory: int = MAX_MEMORY_BYTES,
                 log: Callable[[str], None] = print) -> GradingSummary:
    """Grade every submission in `submissions` into `gradebook` (and its wide CSV and feedback files), `jobs`
    kernels at once; return what this run graded. `bom` starts both CSVs with UTF-8's byte-order mark, for Excel on
    Windows. `lms_export` ("canvas" or "moodle") also writes GRADEBOOK-STEM-LMS.csv for that system's import, its
    identity columns from `roster` (which also maps LMS download names to student keys; lms.py). Ctrl-C stops it
    cleanly: KeyboardInterrupt, nothing recorded for the students in progress. `isolation` ("auto", "namespaces" or
    "none": isolation.py) says where the kernels run, `memory` their RLIMIT_DATA in bytes (0: none)."""
    isolation_mode = isolation
    if isolation not in MODES:
        raise UsageError(f"--isolation {isolation!r} is not a mode; choose one of {', '.join(MODES)}")
    if not (isinstance(memory, int) and memory >= 0):
        raise UsageError(f"memory must be a whole number of bytes, 0 for no limit, not {memory!r}")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise UsageError(f"jobs must be a whole number of at least 1, not {jobs!r}")
    gradebook = check_output(Path(gradebook), "--out")
    book_args = (check_output(Path(wide), "--wide") if wide else None,
                 check_output(Path(feedback), "--feedback", folder=True) if feedback else None)
    if not Path(submissions).is_dir():
        raise UsageError(f"{submissions} is not a folder of {SUFFIX} submissions")
    if lms_export is not None and lms_export not in lms.LMS:
        raise UsageError(f"--lms {lms_export!r} is not one this grader writes; choose {' or '.join(lms.LMS)}")
    export = check_output(gradebook.with_name(f"{gradebook.stem}-{lms_export}.csv"), "--lms") if lms_export else None
    students = lms.read_roster(roster) if roster is not None else None
    found = find_submissions(Path(submissions), students, log)
    if not found:
        raise UsageError(f"no {SUFFIX} files in {submissions}")
    checks = checks or Checks.load()
    summary = GradingSummary()
    with contextlib.ExitStack() as stack:
        book = stack.enter_context(Gradebook(gradebook, checks, *book_args, log=log, bom=bom))
        if check_data:
            ensure_mnist(log=log)  # a missing data set is the instructor's problem, never blamed on a student
        done = set() if redo else book.graded()
        todo = [s for s in found if s.student not in done]
        summary.skipped = len(found) - len(todo)
        if summary.skipped:
            log(f"skipping {summary.skipped} student(s) already in {gradebook} (use --redo to grade again)")
        isolation = NO_ISOLATION
        if todo:  # the kernels' private folders and the package copy in a folder of this run's own
            run = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mnist-grading-")))
            isolation = resolve(isolation_mode, [Path(submissions), gradebook.parent, book.wide.parent, book.feedback,
                                                 *package_source()], _needed_folders(), run, memory, log)
            log(sandbox.describe_isolation(isolation))
        with sandbox.reaping():
            if leftovers := sandbox.sweep_leftovers():
                log(f"killed {leftovers} process(es) left behind by an earlier grader that was killed")
            _grade_all(todo, book, summary, checks, limits, jobs, redo, code_digests(), isolation, log)
        book.save()  # every kernel is gone: the final state of every file is the record's
        summary.changed = book.changed
        if export is not None:
            totals = {student: book.students[student][-1].points for student in book.graded()}
            text = (lms.canvas_csv(totals, checks.full, students or {}, assignment, bom) if lms_export == "canvas"
                    else lms.moodle_csv(totals, students or {}, assignment, bom))
            try:
                atomic_write(export, text.encode())
            except OSError as exc:
                raise OutputFailed(f"cannot write {export}: {exc.strerror or exc}; free some space and run the same "
                                   "command again (every student is in the gradebook already)") from None
            log(f"{lms_export} import file: {export} ({len(totals)} student(s), the assignment column {assignment!r})")
            if missing := lms.unmatched(totals, students or {}, lms_export):
                log(f"{len(missing)} student(s) in it have nothing {lms_export} can match them by (no roster row, or "
                    f"no identifier in it): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; add "
                    "them to the --roster and run again")
    if summary.totals:
        mean = sum(p for p, _ in summary.totals.values()) / len(summary.totals)
        full = sum(p == m for p, m in summary.totals.values())
        log(f"graded {len(summary.totals)} notebook(s): mean {mean:.2f} of {checks.full} points, {full} with full "
            f"marks; {gradebook}, {book.wide}, feedback in {book.feedback}/")
    rows_of = book.students
    if other := sorted(s for s in summary.totals if s in rows_of and OTHER_VERSION in rows_of[s][-1].message):
        log(f"warning: {len(other)} notebook(s) ran another mnist_lesson version than this grader's "
            f"{mnist_lesson.__version__}: {', '.join(other[:10])}{' ...' if len(other) > 10 else ''} (their feedback "
            "says which); their checks may differ from what the student saw")
    if summary.failed:
        log(f"{len(summary.failed)} notebook(s) could not be graded because of the grader ({', '.join(summary.failed)})"
            "; nothing was recorded for them: run again to retry")
    return summary


def _grade_all(todo: list[Submission], book: Gradebook, summary: GradingSummary, checks: Checks,
               limits: GradingLimits, jobs: int, redo: bool, digests: Mapping[str, str], isolation: Isolation,
               log: Callable[[str], None]) -> None:
    """Grade `todo` with `jobs` worker threads; this thread alone records the results. Raises KeyboardInterrupt
    (Ctrl-C) or EnvironmentChanged after stopping the workers and saving what finished."""
    tasks: queue.SimpleQueue[Submission] = queue.SimpleQueue()
    for sub in todo:
        tasks.put(sub)
    events: queue.SimpleQueue[tuple[str, Submission, object]] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                sub = tasks.get_nowait()
            except queue.Empty:
                return
            events.put(("start", sub, time.monotonic()))
            try:
                events.put(("done", sub, grade_notebook(sub.path, sub.student, checks, limits, stop, jobs, digests,
                                                        isolation)))
            except Stopped:
                events.put(("stopped", sub, None))
            except BaseException as exc:  # one notebook never stops the others; nothing is recorded for it
                events.put(("failed", sub, exc))

    threads = [threading.Thread(target=work, name=f"grader-{i}", daemon=True) for i in range(min(jobs, len(todo)))]
    for t in threads:
        t.start()
    started: dict[str, float] = {}  # in progress: student -> start time
    begun, finished = [0], 0

    def handle(kind: str, sub: Submission, value: object) -> None:
        nonlocal finished
        if kind == "start":
            started[sub.student] = float(value)  # type: ignore[arg-type]
            begun[0] += 1
            log(f"[{begun[0]}/{len(todo)}] grading {sub.student} ({len(todo) - begun[0]} left after this one)")
            return
        if isinstance(value, EnvironmentChanged):
            raise value  # stops every worker: its student stays in `started`, recorded as nothing
        finished += 1
        seconds = time.monotonic() - started.pop(sub.student, time.monotonic())
        if kind == "done":
            rows: list[Row] = value  # type: ignore[assignment]
            book.record(rows)
            summary.totals[sub.student] = (rows[-1].points, rows[-1].max_points)
            log(f"    {sub.student}: {rows[-1].points}/{rows[-1].max_points} in {seconds:.0f} s: {rows[-1].message}")
        elif kind == "failed":
            summary.failed[sub.student] = f"{type(value).__name__}: {value}"
            log(f"    {sub.student}: NOT graded, the grader failed ({type(value).__name__}: {value}); it is retried on "
                "the next run")

    try:
        while finished < len(todo):
            try:
                handle(*events.get(timeout=0.5))
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and events.empty():
                    break  # (only if a worker died without a word: every result sends one)
    except OutputFailed:  # the files cannot be written (a full disk, a lock taken away): stop every kernel, say so
        _stop_workers(threads, stop, log)
        raise
    except (KeyboardInterrupt, EnvironmentChanged) as exc:
        _stop_workers(threads, stop, log)
        while True:  # results that were complete before the stop are kept; the rest are dropped
            try:
                kind, sub, value = events.get_nowait()
            except queue.Empty:
                break
            if kind == "done" or kind == "failed" and not isinstance(value, EnvironmentChanged):
                handle(kind, sub, value)
        book.save()  # the kernels are gone: the files hold exactly the record
        left = len(todo) - len(summary.totals)
        skip = "drop --redo to skip the students already graded" if redo else "students already graded are skipped"
        log(f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'stopped'}: {len(summary.totals)} student(s) "
            f"graded in this run are saved in {book.path}; nothing was recorded for "
            f"{', '.join(started) or 'anyone in progress'}. Run the same command again to grade the {left} left "
            f"({skip}).")
        raise
