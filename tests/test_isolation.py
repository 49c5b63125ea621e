"""Isolation of student code (issue 23): each hostile case of the review as a submission, graded for real.

In mode "namespaces" (skipped, with the reason, where this machine refuses user namespaces: a skip is never a pass)
each attack is an answer cell that sets `answer = 42` only if the attack failed, so the points say what held; a
notebook cell that kills what it can see must leave the grader and the other kernel grading. The gradebook's own
record is tested in mode "none", the worst case, where a submission can write the gradebook and kill the grader.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_grader import GENEROUS, RIGHT, fake_checks, notebook, read_csv  # noqa: F401  (fake_checks: a fixture)

from mnist_lesson.grading import grader, isolation
from mnist_lesson.grading.contract import TOTAL, Checks

REPO = Path(__file__).resolve().parents[1]
NAMESPACES, WHY_NOT = isolation.namespaces_work()
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason=f"mode namespaces does not work here: {WHY_NOT}")


def protected(check: str) -> str:
    """An answer cell that earns ea's 2 points only if `check` (an expression, which may call refused) holds."""
    return ("import os, pathlib, mnist_lesson\n"
            "def refused(action):\n    try:\n        action()\n    except OSError:\n        return True\n"
            f"    return False\nanswer = 42 if ({check}) else 0")


def refused(statement: str) -> str:
    """An expression: true if `statement` raises OSError (it cannot reach what it aims at)."""
    return f"refused(lambda: {statement})"


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def confined(tmp_path_factory: pytest.TempPathFactory, fake_checks: Checks) -> dict:  # noqa: F811
    """One folder of attacks graded with two kernels at once in mode namespaces."""
    if not NAMESPACES:
        pytest.skip(f"mode namespaces does not work here: {WHY_NOT}")
    root = tmp_path_factory.mktemp("confined")
    folder, books = root / "submissions", root / "books"
    folder.mkdir()
    books.mkdir()
    out = books / "grades.csv"
    package, instructor = Path(isolation.package_source()[0]), REPO / "instructor" / "exercises.ipynb"
    attacks = {
        # A notebook cell appends complete rows for another student, then kills what it takes for the grader.
        "forger": notebook("forger", after=[
            f"with open({str(out)!r}, 'a') as f:\n    f.write('victim,ea,2,2,0,x\\nvictim,eb,1,1,0,x\\n"
            "victim,TOTAL,3,3,0,forged\\n')",
            "import os\nos.kill(os.getppid(), 9)"]),
        "gradebook": notebook("gradebook", {**RIGHT, "ea": protected(
            f"not os.path.exists({str(books)!r} + '/grades.csv.key') and not os.listdir({str(books)!r}) and "
            + refused(f"open({str(out)!r}, 'a')"))}),
        # A kill of everything visible: under --jobs 2 the other kernel, and the grader, must go on.
        "killer": notebook("killer", after=[
            "import os\nfor pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    if pid != os.getpid():\n        try:\n            os.kill(pid, 9)\n        except OSError:\n"
            "            pass\nos.kill(os.getppid(), 9)"]),
        "signals": notebook("signals", {**RIGHT, "ea": protected(
            f"os.getppid() == 0 and {os.getpid()} not in [int(p) for p in os.listdir('/proc') if p.isdigit()] and "
            + refused(f"os.kill({os.getpid()}, 0)"))}),
        "pyc": notebook("pyc", {**RIGHT, "ea": protected(
            refused(f"open({str(package / '__pycache__' / 'planted.pyc')!r}, 'wb')") + " and "
            + refused("open(os.path.join(os.path.dirname(mnist_lesson.__file__), '__pycache__', 'planted.pyc'), 'wb')")
            + f" and not mnist_lesson.__file__.startswith({str(package.parent)!r})")}),
        "solutions": notebook("solutions", {**RIGHT, "ea": protected(
            refused(f"open({str(instructor)!r})") + " and not pathlib.Path(mnist_lesson.__file__).parents[1].joinpath("
            "'instructor').exists()")}),
        "neighbour": notebook("neighbour", {**RIGHT, "ea": protected(
            f"not os.listdir({str(folder)!r}) and " + refused(f"open({str(folder / 'victim.ipynb')!r}, 'w')"))}),
        "memory": notebook("memory", after=["x = bytearray(3 * 2**30)"]),
        "victim": notebook("victim"),
    }
    for student, text in attacks.items():
        (folder / f"{student}.ipynb").write_text(text)
    before, package_before = digest(folder), digest(package)
    messages: list[str] = []
    summary = grader.grade_folder(folder, out, GENEROUS, jobs=2, checks=fake_checks, check_data=False,
                                  isolation="namespaces", log=messages.append)
    rows = {(r["student"], r["exercise"]): r for r in read_csv(out)}
    return {"summary": summary, "rows": rows, "log": messages, "submissions_unchanged": digest(folder) == before,
            "package_unchanged": digest(package) == package_before, "students": set(attacks)}


def points(confined: dict, student: str) -> int:
    return int(confined["rows"][(student, "ea")]["points"])


@pytest.mark.slow
@needs_namespaces
def test_the_grader_says_the_kernels_are_isolated(confined: dict) -> None:
    assert any("its own namespaces" in m for m in confined["log"])


@pytest.mark.slow
@needs_namespaces
def test_killing_the_parent_or_all_it_sees_leaves_the_grader_and_the_other_kernel_grading(confined: dict) -> None:
    assert set(confined["summary"].totals) == confined["students"] and not confined["summary"].failed
    assert points(confined, "signals") == 2  # no grader among its processes, and none it can signal
    assert int(confined["rows"][("victim", TOTAL)]["points"]) == 3


@pytest.mark.slow
@needs_namespaces
def test_the_gradebook_cannot_be_seen_or_forged(confined: dict) -> None:
    assert points(confined, "gradebook") == 2
    assert confined["rows"][("victim", TOTAL)]["message"] != "forged" and confined["summary"].changed == 0


@pytest.mark.slow
@needs_namespaces
def test_a_pyc_cannot_be_planted_in_the_package(confined: dict) -> None:
    assert points(confined, "pyc") == 2 and confined["package_unchanged"]


@pytest.mark.slow
@needs_namespaces
def test_the_solutions_cannot_be_read(confined: dict) -> None:
    assert points(confined, "solutions") == 2


@pytest.mark.slow
@needs_namespaces
def test_other_submissions_cannot_be_read_or_written(confined: dict) -> None:
    assert points(confined, "neighbour") == 2 and confined["submissions_unchanged"]


@pytest.mark.slow
@needs_namespaces
def test_too_much_memory_is_the_students_memory_error_and_grading_goes_on(confined: dict) -> None:
    assert "MemoryError" in confined["rows"][("memory", TOTAL)]["message"]
    assert int(confined["rows"][("memory", TOTAL)]["points"]) == 3


@pytest.mark.slow
@pytest.mark.slow
def test_namespaces_refused_is_a_usage_error_and_auto_warns(tmp_path: Path, fake_checks: Checks,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "namespaces_work", lambda: (False, "no user namespaces (test)"))
    (tmp_path / "a.ipynb").write_text(notebook("a"))
    with pytest.raises(grader.UsageError, match="--isolation namespaces does not work here"):
        grader.grade_folder(tmp_path, tmp_path / "g.csv", checks=fake_checks, check_data=False,
                            isolation="namespaces", log=lambda m: None)
    messages: list[str] = []
    grader.grade_folder(tmp_path, tmp_path / "g.csv", GENEROUS, checks=fake_checks, check_data=False,
                        log=messages.append)
    assert any(m.startswith("WARNING: student kernels are NOT isolated") for m in messages)


@pytest.mark.slow
def test_rows_forged_before_the_grader_is_killed_are_regraded_on_resume(tmp_path: Path,
                                                                        fake_checks: Checks) -> None:  # noqa: F811
    """Mode none, the worst case: the notebook can write the gradebook and SIGKILL the grader."""
    folder, out, once = tmp_path / "in", tmp_path / "grades.csv", tmp_path / "attacked"
    folder.mkdir()
    forge = (f"import os\nif not os.path.exists({str(once)!r}):\n    open({str(once)!r}, 'w').close()\n"
             f"    with open({str(out)!r}, 'a') as f:\n"
             "        for s in ('c', 'zed'):\n"
             "            f.write(f'{s},ea,2,2,0,x\\n{s},eb,1,1,0,x\\n{s},TOTAL,3,3,0,forged\\n')\n"
             "    os.kill(os.getppid(), 9)")
    (folder / "a.ipynb").write_text(notebook("a"))
    (folder / "b.ipynb").write_text(notebook("b", after=[forge]))
    (folder / "c.ipynb").write_text(notebook("c", {"ea": "answer = 7", "eb": "double = None"}))
    script = ("import sys; from mnist_lesson import cli; from mnist_lesson.grading import contract; "
              "contract.CHECKS_MODULE = 'fakechecks'; "
              f"sys.exit(cli.main(['grade', {str(folder)!r}, '--out', {str(out)!r}, '--isolation', 'none']))")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "c,TOTAL,3,3,0,forged" in out.read_text()  # the forged rows are complete, and there
    messages: list[str] = []
    again = grader.grade_folder(folder, out, GENEROUS, checks=fake_checks, check_data=False, isolation="none",
                                log=messages.append)
    assert any("were not written by this grader" in m and "c, zed" in m for m in messages)
    assert set(again.totals) == {"b", "c"} and again.skipped == 1  # a, written by the grader, is trusted
    rows = {(r["student"], r["exercise"]): r["points"] for r in read_csv(out)}
    assert rows[("c", TOTAL)] == "1" and "zed" not in {s for s, _ in rows} and "forged" not in out.read_text()


def test_a_row_changed_after_grading_is_not_trusted(tmp_path: Path, fake_checks: Checks) -> None:  # noqa: F811
    (tmp_path / "a.ipynb").write_text("")
    out = tmp_path / "grades.csv"
    grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=lambda m: None)
    out.write_text(out.read_text().replace("a,TOTAL,0,3", "a,TOTAL,3,3").replace("a,ea,0,2", "a,ea,2,2")
                   .replace("a,eb,0,1", "a,eb,1,1"))
    messages: list[str] = []
    again = grader.grade_folder(tmp_path, out, checks=fake_checks, check_data=False, log=messages.append)
    assert set(again.totals) == {"a"} and again.totals["a"] == (0, 3)
    assert any("not written by this grader" in m for m in messages)


def test_the_memory_limit_is_set_in_mode_none_too() -> None:
    held = subprocess.run([sys.executable, "-c", "from mnist_lesson.grading import sandbox; import resource; "
                           "print(sandbox.apply_limits()['memory'], resource.getrlimit(resource.RLIMIT_DATA)[0])"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert held == ["True", str(isolation.MAX_MEMORY_BYTES)]


def test_a_mount_that_refuses_read_only_is_hidden_or_isolation_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """No mount is left writable: one that refuses a read-only remount gets an empty read-only tmpfs over it, and
    one that refuses both stops the kernel before it starts (the kernel interfaces under /sys and /dev excepted)."""
    mounts = [("/", 0), ("/proc", 0), ("/tmp", 0), ("/tmp/inner", 0), ("/data", 0), ("/sys/fs/cgroup", 0),
              ("/dev/pts", 0)]
    calls: list[tuple[str | None, str, str | None]] = []

    def fake_mount(source, target, fstype, flags, data=None):  # noqa: ANN001, ANN202 (stands in for libc's mount)
        calls.append((source, target, fstype))
        refuses = {"/tmp", "/tmp/inner", "/sys/fs/cgroup", "/dev/pts", "/data"}
        if source is None and flags & isolation._MS_RDONLY and target in refuses and fstype is None \
                and not any(s == "tmpfs" and t == target for s, t, _ in calls):
            raise isolation.IsolationError(f"mount {target}: refused")

    monkeypatch.setattr(isolation, "_mounts", lambda: mounts)
    monkeypatch.setattr(isolation, "_mount", fake_mount)
    assert isolation._all_read_only({}) == ["/tmp", "/data"]  # /tmp/inner lies under /tmp, hidden with it
    assert ("tmpfs", "/tmp", "tmpfs") in calls and ("tmpfs", "/data", "tmpfs") in calls
    assert not any(target.startswith(("/proc", "/sys", "/dev")) for source, target, _ in calls if source == "tmpfs")

    def refuses_everything(source, target, fstype, flags, data=None):  # noqa: ANN001, ANN202
        if target == "/data":
            raise isolation.IsolationError(f"mount {target}: refused")

    monkeypatch.setattr(isolation, "_mount", refuses_everything)
    with pytest.raises(isolation.IsolationError, match="/data cannot be made read-only or hidden"):
        isolation._all_read_only({})
