"""The gradebook's files are safe to open and to point anywhere: formula escaping, output paths, Excel round trips,
a full disk, a feedback folder swapped for a link; and the LMS exports (mnist_lesson/grading/lms.py)."""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path

import pytest

import mnist_lesson
from mnist_lesson.config import UsageError
from mnist_lesson.grading import gradebook as gb
from mnist_lesson.grading import lms
from mnist_lesson.grading.contract import TOTAL, Checks, ExerciseInfo, Row

CHECKS = Checks("checks", (), (ExerciseInfo("q01", "first", "a", 1), ExerciseInfo("ex02", "second", "b", 3)), "",
               lambda namespace: "anonymous")
HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(1+1)", "+1", "-2", "'quoted", "\tTab", "José", "alice"]


def rows(student: str, points: tuple[int, int] = (1, 2), message: str = "ok") -> list[Row]:
    return [Row(student, "q01", points[0], 1, None, message),
            Row(student, "ex02", points[1], 3, 1, "=cmd|' /C calc'!A0"), Row(student, TOTAL, sum(points), 4, 1, "ran")]


def read_cells(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def test_no_cell_starts_like_a_formula_and_the_names_read_back(tmp_path: Path) -> None:
    out = tmp_path / "g.csv"
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        for name in HOSTILE:
            book.record(rows(name))
    for path in (out, tmp_path / "g-wide.csv"):
        for line in read_cells(path):
            assert all(not cell.startswith(("=", "+", "-", "@", "\t")) for cell in line), line
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as again:
        assert again.graded() == set(HOSTILE)  # the escape reads back exactly: nobody is graded twice


@pytest.mark.parametrize("what", ["symlink", "device", "proc", "sys", "folder", "missing parent"])
def test_outputs_must_be_regular_files_in_real_folders(tmp_path: Path, what: str) -> None:
    target = {"symlink": tmp_path / "link.csv", "device": Path("/dev/null"), "proc": Path("/proc/self/fd/1"),
              "sys": Path("/sys/kernel/x.csv"), "folder": tmp_path, "missing parent": tmp_path / "no" / "g.csv"}[what]
    if what == "symlink":
        target.symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(UsageError) as refused:
        gb.Gradebook(target, CHECKS, log=lambda m: None)
    assert "\n" not in str(refused.value) and str(target) in str(refused.value)
    with pytest.raises(UsageError):
        gb.check_output(target, "--wide")


def test_a_feedback_folder_given_as_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "feedback-link").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="symbolic link"):
        gb.check_output(tmp_path / "feedback-link", "--feedback", folder=True)


def test_an_excel_resaved_gradebook_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" adds a byte-order mark and CRLF line ends; its "CSV (Comma delimited)" saves in
    Windows-1252. Both read back; the grader reports the change and rewrites the file from its record."""
    out = tmp_path / "g.csv"
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        book.record(rows("josé"))
        book.record(rows("bob"))
    text = out.read_text(encoding="utf-8")
    for encoded in ((gb.BOM + text.replace("\n", "\r\n")).encode("utf-8"), text.replace("\n", "\r\n").encode("cp1252")):
        out.write_bytes(encoded)
        said: list[str] = []
        with gb.Gradebook(out, CHECKS, log=said.append) as book:
            assert book.graded() == {"josé", "bob"}
            book.save()
        assert out.read_text(encoding="utf-8") == text


def test_a_bom_is_written_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "g.csv"
    with gb.Gradebook(out, CHECKS, log=lambda m: None, bom=True) as book:
        book.record(rows("josé"))
    assert out.read_bytes()[:3] == (tmp_path / "g-wide.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        assert book.graded() == {"josé"}


def test_a_full_disk_stops_in_one_line_and_leaves_no_temporary_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "g.csv"
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        book.record(rows("alice"))
        before = sorted(p.name for p in tmp_path.iterdir())
        monkeypatch.setattr(gb.os, "fsync", full)
        with pytest.raises(gb.OutputFailed, match="the disk is full") as stopped:
            book.record(rows("bob"))
        monkeypatch.setattr(gb.os, "fsync", real_fsync)
    assert "\n" not in str(stopped.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .tmp left behind
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        assert book.graded() == {"alice"}


def test_a_feedback_folder_swapped_for_a_link_is_not_written_through(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "g.csv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "alice.md").write_text("not yours")
    said: list[str] = []
    with gb.Gradebook(out, CHECKS, log=said.append) as book:
        book.record(rows("alice"))
        feedback = tmp_path / "g-feedback"
        for child in feedback.iterdir():
            child.unlink()
        feedback.rmdir()
        feedback.symlink_to(elsewhere)  # what a submission could do between two students
        book.record(rows("alice", (0, 0)))
    assert (elsewhere / "alice.md").read_text() == "not yours"
    assert feedback.is_dir() and not feedback.is_symlink() and "0 of 4" in (feedback / "alice.md").read_text()
    assert any("replaced by a link" in line for line in said)


ROSTER = ("student,name,id,sis_user_id,login,section,email\n"
          "alice,Alice Smith,12345,S-1,asmith,A,alice@example.edu\n"
          "=evil,=HYPERLINK(\"x\"),777,,,B,\n")


def test_the_roster_maps_canvas_and_moodle_download_names(tmp_path: Path) -> None:
    roster_path = tmp_path / "roster.csv"
    roster_path.write_text(gb.BOM + ROSTER, encoding="utf-8")
    roster = lms.read_roster(roster_path)
    assert set(roster) == {"alice", "=evil"}
    assert lms.lms_student("smithalice_12345_67890_exercises", roster)[0] == "alice"
    assert lms.lms_student("smithalice_LATE_12345_67891_exercises", roster)[0] == "alice"
    assert lms.lms_student("Alice Smith_4242_assignsubmission_file_exercises", roster)[0] == "alice"
    assert lms.lms_student("someone_999_1_exercises", roster) is None and lms.looks_like_lms("someone_999_1_x")
    assert lms.lms_student("alice", roster) is None and lms.looks_like_lms("alice") is None


@pytest.mark.parametrize("text", ["name,id\nAlice,1\n", "student,nickname\nalice,al\n", "student\nalice\nAlice\n"])
def test_a_bad_roster_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(text)
    with pytest.raises(UsageError) as refused:
        lms.read_roster(path)
    assert "\n" not in str(refused.value)


def test_canvas_and_moodle_import_files(tmp_path: Path) -> None:
    """Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then the assignment, and a
    Points Possible row; Moodle's: identifier columns to map (email, ID number, full name), then the grade."""
    path = tmp_path / "roster.csv"
    path.write_text(ROSTER)
    roster = lms.read_roster(path)
    totals = {"alice": 27, "=evil": 3, "bob": 29}
    canvas = list(csv.reader(io.StringIO(lms.canvas_csv(totals, 29, roster, "MNIST exercises"))))
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "MNIST exercises"]
    assert canvas[1] == ["Points Possible", "", "", "", "", "29"]
    assert ["Alice Smith", "12345", "S-1", "asmith", "A", "27"] in canvas
    assert ["bob", "", "", "", "", "29"] in canvas  # not in the roster: named, with nothing to match on
    assert all(not cell.startswith(("=", "@", "+", "-")) for line in canvas for cell in line)
    moodle = list(csv.reader(io.StringIO(lms.moodle_csv(totals, roster, "MNIST exercises", bom=True)[1:])))
    assert moodle[0] == ["Email address", "ID number", "Full name", "MNIST exercises"]
    assert ["alice@example.edu", "S-1", "Alice Smith", "27"] in moodle and len(moodle) == 4


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_lock_taken_away_stops_the_grader_before_it_writes_again(tmp_path: Path, how: str) -> None:
    """A submission that deletes (or replaces) the gradebook's lock would let a second grader in, each writing from
    its own record: the grader notices before its next write and stops in one line; what it wrote stays."""
    out = tmp_path / "g.csv"
    lock = tmp_path / "g.csv.lock"
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        book.record(rows("alice"))
        lock.unlink()
        if how == "replaced":
            lock.write_text("")
        with pytest.raises(gb.OutputFailed, match="was deleted or replaced") as stopped:
            book.record(rows("bob"))
    assert "\n" not in str(stopped.value)
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as again:
        assert again.graded() == {"alice"}


def test_a_link_at_the_locks_name_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "g.csv.lock").symlink_to(target)
    with pytest.raises(UsageError, match="lock") as refused, gb.Gradebook(tmp_path / "g.csv", CHECKS, log=print):
        pass
    assert not target.exists() and "\n" not in str(refused.value)


def test_the_exports_match_keys_as_the_exercises_normalize_them(tmp_path: Path) -> None:
    """A file named Alice.ipynb is graded under "Alice"; the roster says "alice": the same student. A stem with
    Moodle's shape that the roster does not know is still read as a Canvas download; Canvas's LATE in any case."""
    path = tmp_path / "roster.csv"
    path.write_text(ROSTER)
    roster = lms.read_roster(path)
    canvas = list(csv.reader(io.StringIO(lms.canvas_csv({"Alice ": 20}, 29, roster, "A"))))
    assert canvas[2][:2] == ["Alice Smith", "12345"]
    assert lms.unmatched({"Alice": 1, "bob": 2}, roster, "canvas") == ["bob"]
    assert lms.lms_student("smithalice_late_12345_1_x", roster)[0] == "alice"
    assert lms.lms_student("smithalice_12345_2_Bob_7_assignsubmission_file_x", roster)[0] == "alice"


def test_every_row_carries_the_version_that_graded_it(tmp_path: Path) -> None:
    out = tmp_path / "g.csv"
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        book.record(rows("alice"))
    header, *body = read_cells(out)
    assert header[-1] == "version" and {line[-1] for line in body} == {mnist_lesson.__version__}


def test_rows_of_an_older_grader_are_regraded_and_another_versions_are_named(tmp_path: Path) -> None:
    out = tmp_path / "g.csv"
    with gb.Gradebook(out, CHECKS, log=lambda m: None) as book:
        book.record(rows("alice"))
        book.record([Row(r.student, r.exercise, r.points, r.max_points, r.hints, r.message, "0.0.9")
                     for r in rows("bob")])
    logged: list[str] = []
    with gb.Gradebook(out, CHECKS, log=logged.append) as again:
        assert again.graded() == {"alice", "bob"}  # both signed by this grader: kept, and the older one named
    assert any("graded by mnist_lesson 0.0.9" in line and "--redo" in line for line in logged), logged
    # A gradebook from before the version column: its rows cannot be this grader's, so they are graded again.
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(",".join(line.split(",")[:-1]) if i == 0 else line.rsplit(",", 1)[0]
                             for i, line in enumerate(lines)) + "\n", encoding="utf-8")
    logged.clear()
    with gb.Gradebook(out, CHECKS, log=logged.append) as old:
        assert old.graded() == set()
    assert any("no version column" in line for line in logged), logged
