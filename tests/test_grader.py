"""The grader: every kind of submission gets its rows, hostile notebooks change nothing, the gradebook is exact.

Most cases grade tiny notebooks against a stand-in checks module with the interface of issue 14 (no torch, so
kernels start fast); the end-to-end tests grade the real exercise notebook, whatever EXERCISES holds. Only the
tests of time limits use short limits, on notebooks that do nothing but wait or loop; every other case gets a
limit no machine, however slow or busy, reaches. No test asserts elapsed time: a limit is checked by what it
did (the step stopped, the row says so, nothing is left running). Tests that start kernels are marked slow.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

import mnist_lesson
from mnist_lesson.config import UsageError
from mnist_lesson.grading import contract, gradebook, grader, sandbox
from mnist_lesson.grading.contract import TOTAL, Checks

REPO = Path(__file__).resolve().parents[1]
GENEROUS = grader.GradingLimits(timeout=1800, grading=1800)  # never reached, however slow or busy the machine
TOKEN = f"{os.getpid()}{time.monotonic_ns() % 10**6}"  # in the argv of every process a fixture leaves running

FAKE_CHECKS = '''
"""A stand-in for mnist_lesson.grading.exercises with the interface of issue 14, and no torch."""
from __future__ import annotations

import os
from dataclasses import dataclass

PRELUDE = "from fakechecks import EXERCISES, ea, eb"


@dataclass(frozen=True)
class Result:
    exercise: str
    points: int
    max_points: int
    message: str


class Exercise:
    def __init__(self, name, title, variable, max_points, check):
        self.name, self.title, self.variable, self.max_points, self._check = name, title, variable, max_points, check
        self.hints_used = 0

    def grade(self, answer, student):
        try:
            points, message = self._check(answer, student)
        except KeyboardInterrupt:
            return Result(self.name, 0, self.max_points, "checking it took too long")
        except Exception as exc:
            return Result(self.name, 0, self.max_points, f"your answer raised {type(exc).__name__}")
        return Result(self.name, points, self.max_points, message)

    def hint(self):
        self.hints_used += 1
        print("Hint: think again.")


def _answer(answer, student):
    if answer == 42:
        return 2, "right."
    return (1, "an int, but not the one.") if isinstance(answer, int) else (0, "not answered yet.")


def _double(answer, student):
    if not callable(answer):
        return 0, "not answered yet."
    n = len(student)  # this student's number
    return (1, "it doubles.") if answer(n) == 2 * n else (0, "it does not double.")


ea = Exercise("ea", "the answer", "answer", 2, _answer)
eb = Exercise("eb", "a doubling function", "double", 1, _double)
EXERCISES = {ex.name: ex for ex in (ea, eb)}


def student_key(namespace):
    value = namespace.get("STUDENT")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return os.environ.get("MNIST_LESSON_STUDENT", "").strip() or "anonymous"
'''
RIGHT = {"ea": "answer = 42", "eb": "def double(n):\n    return 2 * n"}
EMPTY = {"ea": "answer = None", "eb": "double = None"}


@pytest.fixture(scope="session")
def fake_checks(tmp_path_factory: pytest.TempPathFactory) -> Checks:
    """The stand-in checks, importable here and in every kernel."""
    folder = tmp_path_factory.mktemp("fake")
    (folder / "fakechecks.py").write_text(FAKE_CHECKS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(folder)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
        yield Checks.load("fakechecks")


def code(source: str, grade_id: str | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": grade_id.endswith("-answer"), "grade": False,
                                     "locked": not grade_id.endswith("-answer"), "schema_version": 3}
    return cell


def notebook(student: str, answers: dict[str, str] = RIGHT, before: list[str] = (), after: list[str] = (),
             marked: bool = True, first_line: bool = False) -> str:
    """A submission: import cell, STUDENT, cells `before`, the answer cells, cells `after`."""
    cells = [code("from fakechecks import EXERCISES, ea, eb", "imports" if marked else None),
             code(f"STUDENT = {student!r}", "student" if marked else None)]
    cells += [code(source) for source in before]
    for name, source in answers.items():
        cells.append(code(f"# Answer {name}: assign it, run this cell\n{source}" if first_line else source,
                          f"{name}-answer" if marked else None))
    cells += [code(source) for source in after]
    return nbformat.writes(nbformat.v4.new_notebook(cells=cells))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def leftovers() -> list[str]:
    """Command lines of processes still running that a fixture started (they carry TOKEN)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if TOKEN in line and "pytest" not in line:
            found.append(line)
    return found


# --- one folder of ordinary and hostile submissions, graded once with two kernels at a time (slow) --------------

BACKGROUND = [
    f"import subprocess\nsubprocess.Popen(['sleep', '1000.{TOKEN}1'], start_new_session=True)",
    f"import subprocess\nsubprocess.Popen(['sleep', '1000.{TOKEN}2'], env={{}}, start_new_session=True)",
    f"import os\nos.system('env -i setsid sh -c \"sleep 1000.{TOKEN}3 &\"')",
    f"%%bash\ntrap '' INT TERM\n(sleep 1000.{TOKEN}4 > /dev/null 2>&1 &)",
]
FORGE = """import builtins, json, os, sys, fakechecks
fakechecks.Exercise.grade = lambda self, answer, student: fakechecks.Result(self.name, self.max_points,
                                                                            self.max_points, "forged")
line = json.dumps({"exercise": "ea", "points": 2, "max_points": 2, "message": "forged"})
json.dumps = lambda *args, **kwargs: line
builtins.print = lambda *args, **kwargs: None
builtins.exec = lambda *args, **kwargs: None
builtins.isinstance = lambda *args: True
builtins.callable = lambda *args: True
sys.stdout = open(os.devnull, "w")
fakechecks.EXERCISES.clear()"""


def submissions(folder: Path, secret: Path) -> dict[str, str]:
    """Write the fixture folder; return {student: what it is}."""
    probe = folder.parent / "probe.json"
    files = {
        "correct": notebook("correct"),
        "partly": notebook("partly", {**RIGHT, "ea": "answer = 7"}),
        "raises": notebook("raises", after=["1 / 0"]),
        "hints": notebook("hints", after=["ea.hint()\nea.hint()", "eb.hint()"]),
        "forger": notebook("forger", EMPTY, after=[FORGE]),
        "answer_forger": notebook("answer_forger", {"ea": f"answer = 'wrong'\n{FORGE}", "eb": "double = None"}),
        "first_line": notebook("first_line", marked=False, first_line=True),
        "stripped": notebook("stripped", marked=False),
        "helper": notebook("helper", {**RIGHT, "eb": "double = twice"}, before=["def twice(n):\n    return 2 * n"]),
        "other_key": notebook("somebody else"),
        "exits": notebook("exits", after=["import os\nos._exit(3)", "x = 1"]),
        "quits": notebook("quits", after=["exit()", "x = 1"]),  # asks the front end to stop it: graded on
        "terminates": notebook("terminates", after=["import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
                                                     "x = 1"]),
        "asks": notebook("asks", after=["name = input('your name? ')"]),
        "floods": notebook("floods", {**RIGHT, "eb": "def double(n):\n    print('x' * 30_000_000)\n    return 2 * n"},
                           after=["print('y' * 50_000_000)"]),
        "background": notebook("background", after=BACKGROUND),
        "isolated": notebook("isolated", after=[textwrap.dedent(f"""
            import json, resource, socket
            limits = {{n: resource.getrlimit(getattr(resource, n))[0] for n in ('RLIMIT_FSIZE', 'RLIMIT_NOFILE')}}
            try:
                socket.create_connection(('127.0.0.1', {PORT}), timeout=5).close()
                network = 'reached'
            except OSError as exc:
                network = type(exc).__name__
            with open({str(probe)!r}, 'w') as f:
                json.dump({{'limits': limits, 'network': network}}, f)""")]),
        "Zoë, \"quoted\" 'name'": notebook("Zoë, \"quoted\" 'name'"),
        "n" * 240: notebook("n" * 240),
        "new\nline": notebook("new\\nline"),
    }
    for student, text in files.items():
        (folder / f"{student}.ipynb").write_text(text)
    what = {grader.student_name(f"{stem}.ipynb"): stem for stem in files}
    (folder / "W.IPYNB").write_text(notebook("W"))
    (folder / os.fsdecode(b"caf\xe9.ipynb")).write_text(notebook("caf\\xe9"))
    (folder / "empty.ipynb").write_text("")
    (folder / "broken.ipynb").write_text('{"cells": [')
    (folder / "list.ipynb").write_text("[]")
    (folder / "other_json.ipynb").write_text('{"a": 1}')
    (folder / "latin1.ipynb").write_bytes(b'{"cells": "\xe9"}')
    v3 = nbformat.v3.new_notebook(worksheets=[nbformat.v3.new_worksheet(cells=[nbformat.v3.new_code_cell("x = 1")])])
    (folder / "v3.ipynb").write_text(nbformat.writes(v3, version=3))
    (folder / "link.ipynb").symlink_to(secret)
    os.mkfifo(folder / "fifo.ipynb")
    (folder / "folder.ipynb").mkdir()
    (folder / "._hidden.ipynb").write_text("mac resource fork: ignored")
    (folder / "notes.txt").write_text("not a notebook: ignored")
    what.update({"W": "W", "caf\\xe9": "caf\\xe9", "empty": "empty", "broken": "broken", "list": "list",
                 "other_json": "other_json", "latin1": "latin1", "v3": "v3", "link": "link", "fifo": "fifo",
                 "folder": "folder"})
    return what


PORT = 0  # set by the fixture: a port this process listens on, which a kernel without network cannot reach


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory, fake_checks: Checks) -> dict:
    global PORT
    root = tmp_path_factory.mktemp("graded")
    folder = root / "submissions"
    folder.mkdir()
    secret = root / "secret.txt"
    secret.write_text("TOPSECRET-1234567890-do-not-copy-into-the-gradebook")
    listener = socket.create_server(("127.0.0.1", 0))
    PORT = listener.getsockname()[1]
    students = submissions(folder, secret)
    messages: list[str] = []
    out = root / "grades.csv"
    # Mode none: the probes write into this folder, which namespaces hide (those are tested in test_isolation.py); the
    # protections tested here hold in every mode.
    summary = grader.grade_folder(folder, out, GENEROUS, jobs=2, checks=fake_checks, check_data=False,
                                  isolation="none", log=messages.append)
    listener.close()
    rows = read_csv(out)
    return {"summary": summary, "students": students, "rows": rows, "out": out, "root": root, "log": messages,
            "book": {(r["student"], r["exercise"]): r for r in rows}, "wide": read_csv(root / "grades-wide.csv"),
            "probe": json.loads((root / "probe.json").read_text()), "leftovers": leftovers()}


def points(graded: dict, student: str) -> dict[str, int]:
    return {ex: int(graded["book"][(student, ex)]["points"]) for ex in ("ea", "eb", TOTAL)}


def total(graded: dict, student: str) -> dict[str, str]:
    return graded["book"][(student, TOTAL)]


@pytest.mark.slow
def test_every_submission_gets_one_row_per_exercise_and_a_total(graded: dict) -> None:
    assert set(graded["summary"].totals) == set(graded["students"]) and not graded["summary"].failed
    assert [r["exercise"] for r in graded["rows"]] == ["ea", "eb", TOTAL] * len(graded["students"])
    assert list(graded["rows"][0]) == gradebook.COLUMNS


@pytest.mark.slow
def test_a_correct_submission_gets_full_marks(graded: dict) -> None:
    assert points(graded, "correct") == {"ea": 2, "eb": 1, TOTAL: 3}
    assert total(graded, "correct")["message"] == "ran without errors"
    assert total(graded, "correct")["hints"] == "0"


@pytest.mark.slow
def test_partial_credit_and_the_students_own_numbers(graded: dict) -> None:
    assert points(graded, "partly") == {"ea": 1, "eb": 1, TOTAL: 2}
    assert graded["book"][("partly", "ea")]["message"] == "an int, but not the one."


@pytest.mark.slow
def test_an_exception_costs_nothing_else(graded: dict) -> None:
    assert points(graded, "raises")[TOTAL] == 3
    assert total(graded, "raises")["message"].startswith("1 cell(s) raised an error (first: code cell 5, "
                                                         "ZeroDivisionError")


@pytest.mark.slow
def test_hint_use_is_recorded_per_exercise(graded: dict) -> None:
    assert [graded["book"][("hints", ex)]["hints"] for ex in ("ea", "eb", TOTAL)] == ["2", "1", "3"]
    assert points(graded, "hints")[TOTAL] == 3


@pytest.mark.slow
def test_forging_outside_the_answer_cells_changes_nothing(graded: dict) -> None:
    assert points(graded, "forger") == {"ea": 0, "eb": 0, TOTAL: 0}
    assert graded["book"][("forger", "ea")]["message"] == "not answered yet."


@pytest.mark.slow
def test_forging_inside_answer_cells_does_not_reach_the_captured_grading_step(graded: dict) -> None:
    # print, exec, json.dumps, isinstance, callable, sys.stdout and the public checks replaced: no effect.
    assert points(graded, "answer_forger") == {"ea": 0, "eb": 0, TOTAL: 0}


@pytest.mark.slow
def test_answer_cells_are_found_by_metadata_or_first_line(graded: dict) -> None:
    assert points(graded, "first_line")[TOTAL] == 3
    assert points(graded, "stripped")[TOTAL] == 0
    assert "answer cells could not be found" in graded["book"][("stripped", "ea")]["message"]


@pytest.mark.slow
def test_only_answer_cells_are_graded(graded: dict) -> None:
    assert points(graded, "helper") == {"ea": 2, "eb": 0, TOTAL: 2}
    message = total(graded, "helper")["message"]
    assert "grading: answer cell eb raised NameError: name 'twice' is not defined" in message
    assert "keep everything an answer needs inside its answer cell" in message
    # The exercise's own row says what happened: the answer raised; it was not left blank.
    row = graded["book"][("helper", "eb")]["message"]
    assert row.startswith("your answer cell raised NameError: name 'twice' is not defined")
    assert "not answered" not in row


@pytest.mark.slow
def test_the_file_name_is_the_student_key(graded: dict) -> None:
    # Graded as "other_key" (its own numbers: eb is checked on len(key)), and told the notebook used another key.
    assert points(graded, "other_key")[TOTAL] == 3
    assert "student key 'somebody else' but was graded as 'other_key'" in total(graded, "other_key")["message"]


@pytest.mark.slow
def test_kernels_that_exit_or_ask_for_input_are_still_graded(graded: dict) -> None:
    for student in ("exits", "terminates"):
        assert points(graded, student)[TOTAL] == 3, student
        assert "the kernel stopped by itself in cell 5 of the notebook" in total(graded, student)["message"], student
    assert points(graded, "quits")[TOTAL] == 3
    assert points(graded, "asks")[TOTAL] == 3
    assert "StdinNotImplementedError" in total(graded, "asks")["message"]


@pytest.mark.slow
def test_floods_of_output_cost_nothing_even_in_the_grading_step(graded: dict) -> None:
    assert points(graded, "floods")[TOTAL] == 3
    assert total(graded, "floods")["message"] == "ran without errors"


@pytest.mark.slow
def test_nothing_a_submission_started_outlives_its_grading(graded: dict) -> None:
    assert points(graded, "background")[TOTAL] == 3
    assert graded["leftovers"] == []


@pytest.mark.slow
def test_kernels_run_under_limits_and_without_network_where_the_system_allows(graded: dict) -> None:
    held = json.loads(subprocess.run([sys.executable, "-m", "mnist_lesson.grading.sandbox", "--probe"],
                                     capture_output=True, text=True, check=True).stdout)
    probe = graded["probe"]
    if held["file_size"]:
        assert probe["limits"]["RLIMIT_FSIZE"] == sandbox.MAX_FILE_BYTES
    if held["open_files"]:
        assert probe["limits"]["RLIMIT_NOFILE"] <= sandbox.MAX_OPEN_FILES
    assert (probe["network"] != "reached") == held["network"]
    assert "student kernels run with" in " ".join(graded["log"])


@pytest.mark.slow
def test_odd_names_are_graded_under_safe_names(graded: dict) -> None:
    for student in ["Zoë, \"quoted\" 'name'", "n" * 240, "W", "caf\\xe9", "new\\nline"]:
        assert points(graded, student)[TOTAL] == 3, student


@pytest.mark.slow
def test_files_that_are_not_notebooks_get_rows_with_the_reason(graded: dict) -> None:
    reasons = {"empty": "empty file", "broken": "not a valid notebook: its JSON breaks at line 1, column 12",
               "list": "not a notebook (JSON", "other_json": "not a notebook (JSON",
               "latin1": "not a notebook: not UTF-8",
               "link": "a symbolic link, not a notebook", "fifo": "not a regular file", "folder": "not a regular file"}
    for student, reason in reasons.items():
        assert points(graded, student)[TOTAL] == 0, student
        assert total(graded, student)["message"].startswith(reason), (student, total(graded, student)["message"])
        assert total(graded, student)["max_points"] == "3"
    assert points(graded, "v3")[TOTAL] == 0  # a valid old notebook, without answer cells
    assert "TOPSECRET" not in graded["out"].read_text()
    assert "hidden" not in graded["out"].read_text()


@pytest.mark.slow
def test_the_wide_csv_has_one_row_per_student(graded: dict) -> None:
    wide = {row["student"]: row for row in graded["wide"]}
    assert list(graded["wide"][0]) == ["student", "ea", "eb", "total", "hints"]
    assert set(wide) == set(graded["students"])
    assert wide["partly"] == {"student": "partly", "ea": "1", "eb": "1", "total": "2", "hints": "0"}
    assert wide["hints"]["hints"] == "3"


@pytest.mark.slow
def test_every_student_gets_a_feedback_file(graded: dict) -> None:
    folder = graded["root"] / "grades-feedback"
    assert len(list(folder.iterdir())) == len(graded["students"])
    text = (folder / "partly.md").read_text()
    assert text.startswith("# partly: 2 of 3 points")
    assert "## ea · the answer: 1 of 2\n\nan int, but not the one." in text
    assert (folder / gradebook.feedback_file("new\\nline")).read_text().startswith("# new\\nline: 3 of 3")


# --- time limits: tiny notebooks that only wait or loop, under short limits ------------------------------------


@pytest.mark.slow
def test_the_limit_is_wall_time_for_the_whole_notebook(tmp_path: Path, fake_checks: Checks) -> None:
    path = tmp_path / "slow.ipynb"
    path.write_text(notebook("slow", after=["import time\ntime.sleep(0.5)"] * 60))
    rows = grader.grade_notebook(path, checks=fake_checks, limits=grader.GradingLimits(timeout=3, grading=1800))
    assert rows[-1].points == 3  # the answers came first
    assert "the notebook did not finish within the 3 s limit (" in rows[-1].message
    assert int(rows[-1].message.split("(")[1].split()[0]) >= 40  # cells not run: no cell starts after the limit


@pytest.mark.slow
def test_a_step_stops_at_its_limit_and_a_kernel_that_ignores_the_interrupt_is_killed(tmp_path: Path) -> None:
    env = dict(os.environ)
    with sandbox.Sandbox(env, grace=8) as box:  # a slow, busy CPU can take seconds to format the first traceback
        slow, stubborn, after = box.run([
            sandbox.Step("slow", ["import time\ntime.sleep(1)"] * 30, 2),
            sandbox.Step("stubborn", ["import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n"
                                      "    pass"], 1),
            sandbox.Step("after", ["x = 1"], 1800)])
        kernel = box.proc
    assert slow.stopped == "time" and len(slow.replies) < 30  # stopped at the limit: its last cells never started
    assert stubborn.stopped == "killed" and after.stopped == "not run"
    assert kernel is not None and kernel.poll() is not None  # the kernel that ignored the interrupt is gone


@pytest.mark.slow
def test_an_endless_loop_in_an_answer_cell_is_stopped_and_graded(tmp_path: Path, fake_checks: Checks) -> None:
    path = tmp_path / "loops.ipynb"
    path.write_text(notebook("loops", {**RIGHT, "ea": "answer = 42\nwhile True:\n    pass"}))
    rows = grader.grade_notebook(path, checks=fake_checks, limits=grader.GradingLimits(timeout=3, grading=1800))
    assert [r.points for r in rows] == [2, 0, 2]  # interrupted after `answer` was set; eb's cell never ran
    assert "grading: the answer cells did not finish within the 3 s limit (1 cell(s) not run)" in rows[-1].message


@pytest.mark.slow
def test_the_grading_step_has_its_own_limit(tmp_path: Path, fake_checks: Checks) -> None:
    limits = grader.GradingLimits(timeout=1800, grading=4, grace=8)
    slow = tmp_path / "slow.ipynb"
    slow.write_text(notebook("slow", {**RIGHT, "eb": "def double(n):\n    while True:\n        pass"}))
    assert [(r.points, r.message) for r in grader.grade_notebook(slow, checks=fake_checks, limits=limits)[:2]] == \
        [(2, "right."), (0, "checking it took too long")]
    stubborn = tmp_path / "stubborn.ipynb"
    stubborn.write_text(notebook("stubborn", {**RIGHT, "eb": "def double(n):\n    import signal\n"
                                              "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    while True:\n"
                                              "        pass"}))
    rows = grader.grade_notebook(stubborn, checks=fake_checks, limits=limits)
    assert rows[0].points == 2  # graded before eb hung: kept
    assert rows[1].message == "not graded: checking took longer than the 4 s limit"


@pytest.mark.slow
def test_bash_cells_that_sleep_or_trap_signals_are_stopped_and_leave_nothing(tmp_path: Path,
                                                                            fake_checks: Checks) -> None:
    path = tmp_path / "bash.ipynb"
    path.write_text(notebook("bash", after=[f"%%bash\ntrap '' INT TERM\nsleep 1000.{TOKEN}9"]))
    rows = grader.grade_notebook(path, checks=fake_checks, limits=grader.GradingLimits(timeout=3, grading=1800))
    assert rows[-1].points == 3 and "did not finish within the 3 s limit" in rows[-1].message
    assert leftovers() == []


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_limits_that_cannot_work_are_usage_errors(value: float) -> None:
    with pytest.raises(UsageError, match="finite number of seconds above 0"):
        grader.GradingLimits(timeout=value)


# --- Ctrl-C ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigint_raises_keyboard_interrupt() -> Iterator[None]:
    """Python turns SIGINT into KeyboardInterrupt only when its parent did not ignore it (a shell's background job
    starts with it ignored): set that up for the test, whoever started pytest."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupt_when(path: Path) -> threading.Thread:
    """Send this process SIGINT (Ctrl-C) once `path` exists."""
    def wait() -> None:
        for _ in range(6000):
            if path.exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_records_nothing_in_progress_and_resumes(tmp_path: Path,
                                                                     fake_checks: Checks) -> None:
    folder, sentinel, out = tmp_path / "in", tmp_path / "b-started", tmp_path / "grades.csv"
    folder.mkdir()
    (folder / "a.ipynb").write_text(notebook("a"))
    (folder / "b.ipynb").write_text(notebook("b", after=[f"open({str(sentinel)!r}, 'w').close()\nimport subprocess\n"
                                                         f"subprocess.run(['sleep', '1000.{TOKEN}5'])"]))
    messages: list[str] = []
    with sigint_raises_keyboard_interrupt(), pytest.raises(KeyboardInterrupt):
        interrupt_when(sentinel)  # mode none: the kernel's sentinel must reach this folder
        grader.grade_folder(folder, out, GENEROUS, checks=fake_checks, check_data=False, isolation="none",
                            log=messages.append)
    assert [r["student"] for r in read_csv(out) if r["exercise"] == TOTAL] == ["a"]
    assert "nothing was recorded for b" in messages[-1] and "Run the same command again" in messages[-1]
    assert leftovers() == []
    (folder / "b.ipynb").write_text(notebook("b"))
    again = grader.grade_folder(folder, out, GENEROUS, checks=fake_checks, check_data=False, log=lambda m: None)
    assert set(again.totals) == {"b"} and again.skipped == 1
    assert gradebook.graded_students(out, fake_checks) == {"a", "b"}


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_exits_130_and_says_how_to_resume(tmp_path: Path,
                                                                    fake_checks: Checks) -> None:
    folder, sentinel = tmp_path / "in", tmp_path / "started"
    folder.mkdir()
    (folder / "a.ipynb").write_text(notebook("a", after=[f"open({str(sentinel)!r}, 'w').close()\nimport time\n"
                                                         "time.sleep(1000)"]))
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from mnist_lesson import cli; from mnist_lesson.grading import contract; "
              "contract.CHECKS_MODULE = 'fakechecks'; "
              f"sys.exit(cli.main(['grade', {str(folder)!r}, '--out', {str(tmp_path / 'g.csv')!r}, '--isolation', "
              "'none']))")  # mode none: the kernel's sentinel must reach this folder
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(6000):
        if sentinel.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert "Run the same command again" in stdout and "interrupted" in stderr
    assert leftovers() == []


# --- the gradebook -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_gradebook_changed_behind_the_graders_back_is_rewritten_from_its_record(tmp_path: Path,
                                                                                 fake_checks: Checks) -> None:
    folder, out = tmp_path / "in", tmp_path / "grades.csv"
    folder.mkdir()
    (folder / "a.ipynb").write_text(notebook("a"))
    attack = (f"open({str(out)!r}, 'w').write('junk')\nwith open({str(out)!r}, 'a') as f:\n"
              "    f.write('zed,TOTAL,999,3,,forged\\n')")
    (folder / "b.ipynb").write_text(notebook("b", after=[attack]))
    (folder / "c.ipynb").write_text(notebook("c", after=[f"import os\nos.remove({str(out)!r})"]))
    messages: list[str] = []  # mode none: in namespaces the gradebook is out of the kernels' sight (test_isolation.py)
    summary = grader.grade_folder(folder, out, GENEROUS, checks=fake_checks, check_data=False, isolation="none",
                                  log=messages.append)
    assert summary.changed == 2
    assert sum("changed by something other than this grader" in m for m in messages) == 2
    rows = read_csv(out)
    assert [(r["student"], r["exercise"]) for r in rows] == [(s, e) for s in "abc" for e in ("ea", "eb", "TOTAL")]
    assert "forged" not in out.read_text() and "junk" not in out.read_text()


def test_a_second_grader_on_the_same_gradebook_is_refused(tmp_path: Path, fake_checks: Checks) -> None:
    (tmp_path / "a.ipynb").write_text("")
    out = tmp_path / "grades.csv"
    with open(tmp_path / "grades.csv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(UsageError, match="another grader is writing"):
            grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None)
    assert not out.exists()
    grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None)  # lock released
    assert gradebook.graded_students(out, fake_checks) == {"a"}


def test_a_torn_last_row_is_never_taken_as_graded(tmp_path: Path, fake_checks: Checks) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.ipynb").write_text("")
    out = tmp_path / "grades.csv"
    grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None)
    whole = out.read_text()
    out.write_text(whole[:-len("empty file: nothing to grade; hand in the saved notebook\n") + 20])
    messages: list[str] = []
    again = grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=messages.append)
    assert set(again.totals) == {"b"} and "is incomplete" in messages[0]
    assert out.read_text() == whole


def test_rerun_skips_graded_students_redo_grades_again_and_old_gradebooks_are_read(
        tmp_path: Path, fake_checks: Checks) -> None:
    (tmp_path / "a.ipynb").write_text("")
    (tmp_path / "b.ipynb").write_text("[]")
    out = tmp_path / "grades.csv"
    old = "student,exercise,points,max_points,message\nold,ea,2,2,kept\nold,eb,1,1,kept\nold,TOTAL,3,3,kept\n"
    out.write_text(old)
    messages: list[str] = []
    assert set(grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=messages.append).totals) \
        == {"a", "b"}
    before = out.read_text()
    assert before.startswith(",".join(gradebook.COLUMNS) + "\n")  # rewritten with the hints column, sorted by student
    # An old gradebook is read, but its rows carry no signature of this grader: never trusted, kept aside, reported.
    assert "\nold," not in before and (tmp_path / "grades.csv.untrusted").read_text() == old
    assert any("were not written by this grader" in m and "old" in m for m in messages)
    again = grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None)
    assert again.totals == {} and again.skipped == 2 and out.read_text() == before
    redo = grader.grade_folder(tmp_path, out, redo=True, checks=fake_checks, check_data=False, log=lambda m: None)
    assert set(redo.totals) == {"a", "b"} and out.read_text() == before  # same rows, not duplicated


def test_a_grader_failure_records_nothing_and_is_retried(tmp_path: Path, fake_checks: Checks,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.ipynb").write_text("")
    real = grader.grade_notebook

    def fail_on_b(path: Path, *args: object) -> list:
        if path.stem == "b":
            raise grader.GraderFailure("the kernel was not ready")
        return real(path, *args)

    monkeypatch.setattr(grader, "grade_notebook", fail_on_b)
    out = tmp_path / "grades.csv"
    summary = grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None)
    assert set(summary.totals) == {"a", "c"} and set(summary.failed) == {"b"}
    assert gradebook.graded_students(out, fake_checks) == {"a", "c"}
    monkeypatch.setattr(grader, "grade_notebook", real)
    assert set(grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None).totals) \
        == {"b"}


@pytest.mark.slow
def test_a_submission_that_changes_code_every_kernel_runs_stops_the_run(tmp_path: Path, fake_checks: Checks,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    course = REPO / "mnist_lesson" / "budget.py"  # the package's modules, not only the grading folder's
    assert {str(Path(grader.__file__)), str(Path(sandbox.__file__)), str(course)} <= set(grader.code_digests())
    module = tmp_path / "module.py"  # stands for the package's own modules, which a notebook could rewrite
    module.write_text("x = 1\n")
    monkeypatch.setattr(grader, "code_digests", lambda: {str(module): contract.file_digest(module)})
    folder, out = tmp_path / "in", tmp_path / "grades.csv"
    folder.mkdir()
    (folder / "a.ipynb").write_text(notebook("a"))
    (folder / "b.ipynb").write_text(notebook("b", after=[f"open({str(module)!r}, 'a').write('forged = True\\n')"]))
    (folder / "c.ipynb").write_text(notebook("c"))
    messages: list[str] = []
    with pytest.raises(grader.EnvironmentChanged, match="module.py changed while b was graded"):  # mode none: the
        # file system is read-only to kernels in namespaces (test_isolation.py), this check is the fallback's
        grader.grade_folder(folder, out, GENEROUS, checks=fake_checks, check_data=False, isolation="none",
                            log=messages.append)
    assert gradebook.graded_students(out, fake_checks) == {"a"} and "nothing was recorded for b" in messages[-1]


def test_outputs_in_missing_folders_and_foreign_csv_are_refused_before_grading(tmp_path: Path,
                                                                              fake_checks: Checks) -> None:
    (tmp_path / "a.ipynb").write_text("")
    for kwargs in ({"gradebook": tmp_path / "nowhere" / "g.csv"}, {"wide": tmp_path / "nowhere" / "w.csv"},
                   {"feedback": tmp_path / "nowhere" / "fb"}):
        args = {"gradebook": tmp_path / "g.csv", **kwargs}
        with pytest.raises(UsageError, match="does not exist"):
            grader.grade_folder(tmp_path, checks=fake_checks, check_data=False, log=lambda m: None, **args)
    assert not (tmp_path / "g.csv").exists()
    other = tmp_path / "other.csv"
    other.write_text("name,score\nx,1\n")
    with pytest.raises(UsageError, match="is not a gradebook"):
        grader.grade_folder(tmp_path, other, checks=fake_checks, check_data=False, log=lambda m: None)


def test_the_command_line_refuses_bad_limits_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mnist_lesson.cli import main

    for argv in (["--timeout", "0"], ["--timeout", "nan"], ["--timeout", "-3"], ["--timeout", "inf"],
                 ["--jobs", "0"], ["--out", str(tmp_path / "nowhere" / "g.csv")]):
        with pytest.raises(SystemExit) as exit_info:
            main(["grade", str(tmp_path), *argv])
        assert exit_info.value.code == 2, argv
    assert "does not exist" in capsys.readouterr().err


# --- pieces ------------------------------------------------------------------------------------------------------


def test_names_and_files_are_found_whatever_the_suffix_case(tmp_path: Path) -> None:
    for name in ("b.ipynb", "A.IPYNB", "a.ipynb", ".hidden.ipynb", "c.txt"):
        (tmp_path / name).write_text("")
    found = grader.find_submissions(tmp_path)
    assert [(s.path.name, s.student) for s in found] == [("A.IPYNB", "A"), ("a.ipynb", "a"), ("b.ipynb", "b")]
    (tmp_path / "b.IPYNB").write_text("")
    assert [s.student for s in grader.find_submissions(tmp_path)][2:] == ["b.IPYNB", "b.ipynb"]  # one student, twice
    assert grader.student_name(os.fsdecode(b"caf\xe9\n.ipynb")) == "caf\\xe9\\n"
    assert gradebook.feedback_file("alice") == "alice.md" and gradebook.feedback_file("../x").startswith("student-")


def test_malformed_torn_or_impossible_results_are_refused(tmp_path: Path, fake_checks: Checks) -> None:
    channel = tmp_path / "results.jsonl"
    good = {"exercise": "ea", "points": 1, "max_points": 2, "message": "ok"}
    lines = [json.dumps(good), "not json", json.dumps({**good, "exercise": "eb", "points": 5, "max_points": 1}),
             json.dumps({"exercise": "zz", "points": 0, "max_points": 1, "message": ""}),
             json.dumps({**good, "exercise": "eb", "max_points": 1, "points": 1})[:-3]]  # torn: no newline
    channel.write_text("\n".join(lines))
    assert grader._read_results(channel, fake_checks) == {"ea": (1, "ok")}
    channel.write_text(json.dumps(good) + "\n" + json.dumps({**good, "points": 2}) + "\n")
    assert grader._read_results(channel, fake_checks)["ea"][0] == 0  # twice: not taken


def test_the_grading_step_carries_its_own_copy_of_the_checks(fake_checks: Checks, tmp_path: Path) -> None:
    source = grader._setup_cell(fake_checks, "key", tmp_path / "channel", "n0nce")
    assert repr(fake_checks.sources) in source and "fakechecks.py" not in source
    assert "_grader_n0nce = " in source


# --- the benchmark, in a smoke run -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_grading_benchmark_runs(tmp_path: Path, fake_checks: Checks) -> None:
    solution = tmp_path / "solution.ipynb"
    solution.write_text(notebook("solution"))
    out = tmp_path / "grading.json"
    env = {k: v for k, v in os.environ.items() if k != "MNIST_LESSON_SMOKE"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "grading.py"), "--copies", "4", "--checks",
                           "fakechecks", "--notebook", str(solution), "--out", str(out), "--no-data-check"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    runs = next(iter(result.values()))
    assert [(r["isolation"], r["jobs"]) for r in runs] == [("none", 1), ("none", 2)]
    assert all(r["submissions"] == 4 for r in runs)
    assert "s/submission" in done.stdout and "cpu" in done.stdout


# --- the real exercise notebook, end to end ---------------------------------------------------------------------

SOLUTION = next((p for p in (REPO / "instructor" / "exercises.ipynb", REPO / "notebooks" / "exercises.ipynb")
                 if p.exists()), None)


@pytest.fixture(scope="module")
def real_checks() -> Checks:
    return Checks.load()


def real_submission(student: str, blank: set[str] = frozenset(), after: list[str] = (), strip: bool = False) -> str:
    """The solution notebook as `student` hands it in, with the answer cells of `blank` emptied (and with every
    cell's nbgrader metadata removed, if `strip`)."""
    checks = Checks.load()
    variables = {ex.name: ex.variable for ex in checks.exercises}
    nb = nbformat.read(SOLUTION, as_version=4)
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        if grade_id == "student":
            cell.source = f"STUDENT = {student!r}"
        elif grade_id.endswith("-answer") and grade_id[:-len("-answer")] in blank:
            cell.source = f"{variables[grade_id[:-len('-answer')]]} = None"
    nb.cells += [nbformat.v4.new_code_cell(source) for source in after]
    for cell in nb.cells if strip else []:
        cell.metadata.pop("nbgrader", None)
    return nbformat.writes(nb)


@pytest.mark.slow
def test_the_real_exercises_end_to_end(real_checks: Checks, tmp_path: Path) -> None:
    names = [ex.name for ex in real_checks.exercises]
    full = {ex.name: ex.max_points for ex in real_checks.exercises}
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "correct.ipynb").write_text(real_submission("correct"))
    (folder / "partly.ipynb").write_text(real_submission("partly", blank={names[0]}))
    forge = ("import builtins, json, mnist_lesson.grading.exercises as c, mnist_lesson.grading.exercise as e\n"
             "for ex in c.EXERCISES.values():\n"
             "    ex.grade = lambda answer, student, ex=ex: e.Result(ex.name, ex.max_points, ex.max_points, 'forged')\n"
             "e.Exercise.grade = lambda self, answer, student: e.Result(self.name, 1, self.max_points, 'forged')\n"
             "json.dumps = lambda *a, **k: '{}'\nbuiltins.print = lambda *a, **k: None")
    (folder / "forger.ipynb").write_text(real_submission("forger", blank=set(names), after=[forge]))
    (folder / "stripped.ipynb").write_text(real_submission("stripped", strip=True))  # found by "# Answer exNN"
    out = tmp_path / "grades.csv"
    summary = grader.grade_folder(folder, out, GENEROUS, jobs=2, checks=real_checks, log=print)
    book = {(r["student"], r["exercise"]): r for r in read_csv(out)}
    assert summary.totals == {"correct": (real_checks.full, real_checks.full),
                              "partly": (real_checks.full - full[names[0]], real_checks.full),
                              "forger": (0, real_checks.full), "stripped": (real_checks.full, real_checks.full)}
    assert all(book[("correct", name)]["hints"].isdigit() for name in names)


def test_a_submission_that_ran_another_version_is_named() -> None:
    def notebook(printed: str) -> nbformat.NotebookNode:
        cell = nbformat.v4.new_code_cell("print(runtime_note(...))")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"), cell])

    other = notebook("mnist_lesson 0.0.9, torch 2.2.0, running on cpu (1 threads)\n")
    assert grader.version_note(other) is not None and "0.0.9" in grader.version_note(other)
    assert mnist_lesson.__version__ in grader.version_note(other)
    same = notebook(f"mnist_lesson {mnist_lesson.__version__}, torch 2.2.0, running on cpu\n")
    assert grader.version_note(same) is None
    assert grader.version_note(notebook("torch 2.2.0, running on cpu\n")) is None  # says nothing: nothing to compare
