"""Gradebooks a learning-management system imports (Canvas, Moodle), and its download file names read through a roster.

A roster is a CSV the instructor keeps, one row per student: `student` (the key the grader grades under, which is
also the key the student's numbers come from) and any of `name`, `id` (the LMS's user id), `sis_user_id`, `login`,
`section` and `email`. With it:

- a submission downloaded from Canvas (`smithalice_12345_67890_exercises.ipynb`: name, optionally `LATE`, user id,
  submission id, file) is graded under the key of the roster row whose `id` is that user id; one downloaded from
  Moodle (`Alice Smith_12345_assignsubmission_file_exercises.ipynb`: full name, participant number, file) under the
  key of the row whose `name` is that full name;
- `canvas_csv` and `moodle_csv` write one assignment column with each student's total, with the identity columns
  each system matches students by: Canvas's gradebook import (Student, ID, SIS User ID, SIS Login ID, Section, then
  the assignment, with a "Points Possible" row), Moodle's CSV grade import (an identifier column to map: email
  address, ID number or full name, then the grade).

Every cell is escaped like the gradebook's (a leading apostrophe before a formula character).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from mnist_lesson.config import UsageError
from mnist_lesson.grading.gradebook import BOM, safe_row

LMS = ("canvas", "moodle")
CANVAS_FILE = re.compile(r"^(?P<name>[^_]+?)(?:_late)?_(?P<user>\d+)_(?P<submission>\d+)_(?P<file>.+)$", re.IGNORECASE)
MOODLE_FILE = re.compile(r"^(?P<name>.+?)_(?P<participant>\d+)_assignsubmission_(?:file|onlinetext)_(?P<file>.*)$")


@dataclass(frozen=True)
class Student:
    """One roster row: the key the grader grades under, and who that is in the LMS."""

    student: str
    name: str = ""
    id: str = ""
    sis_user_id: str = ""
    login: str = ""
    section: str = ""
    email: str = ""


COLUMNS = tuple(f.name for f in fields(Student))


def normalize_key(key: str) -> str:
    """Return a student key as the exercises normalize it: inner spaces collapsed, trimmed, case-folded."""
    return " ".join(key.split()).casefold()


def read_roster(path: Path) -> dict[str, Student]:
    """Return the roster at `path` by student key; UsageError in one line for a file that is not one."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--roster {path} cannot be read as UTF-8 text ({type(exc).__name__}); save it as CSV UTF-8")\
            from None
    rows = list(csv.DictReader(io.StringIO(text)))
    header = [name.strip().lower() for name in (rows[0].keys() if rows else [])]
    if "student" not in header:
        raise UsageError(f"--roster {path} needs a header row with a `student` column (the key each student is graded "
                         f"under) and any of {', '.join(COLUMNS[1:])}")
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise UsageError(f"--roster {path} has columns this grader does not know: {', '.join(unknown)}; use "
                         f"{', '.join(COLUMNS)}")
    roster: dict[str, Student] = {}
    for number, row in enumerate(rows, start=2):
        cells = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key is not None}
        key = normalize_key(cells["student"])
        if not key:
            raise UsageError(f"--roster {path}, line {number}: the `student` cell is empty")
        if key in roster:
            raise UsageError(f"--roster {path}, line {number}: student {key!r} is listed twice")
        roster[key] = Student(**{**cells, "student": key})
    return roster


def lms_student(stem: str, roster: Mapping[str, Student]) -> tuple[str, str] | None:
    """Return (student key, how it was found) for an LMS download's file stem, or None when it is not one or the
    roster does not know it. A Moodle name is tried first, then a Canvas one."""
    if match := MOODLE_FILE.match(stem):
        name = normalize_key(match["name"])
        found = [s for s in roster.values() if normalize_key(s.name) == name]
        if len(found) == 1:
            return found[0].student, f"Moodle download of {match['name']!r}"
    if match := CANVAS_FILE.match(stem):
        found = [s for s in roster.values() if s.id == match["user"]]
        if len(found) == 1:
            return found[0].student, f"Canvas download of user {match['user']}"
    return None


def looks_like_lms(stem: str) -> str | None:
    """Return "Canvas" or "Moodle" when a file stem has that system's download pattern, else None."""
    return "Moodle" if MOODLE_FILE.match(stem) else "Canvas" if CANVAS_FILE.match(stem) else None


def unmatched(totals: Mapping[str, int], roster: Mapping[str, Student], system: str) -> list[str]:
    """Return the graded students the export cannot match in `system` ("canvas" or "moodle"): no identifier."""
    def identified(s: Student) -> bool:
        return bool(s.id or s.sis_user_id or s.login) if system == "canvas" else bool(s.email or s.sis_user_id
                                                                                       or s.id or s.name)
    return sorted(key for key in totals if not identified(roster.get(normalize_key(key), Student(key, name=""))))


def _csv(rows: list[list[object]], bom: bool) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(safe_row(row) for row in rows)
    return (BOM if bom else "") + out.getvalue()


def canvas_csv(totals: Mapping[str, int], full: int, roster: Mapping[str, Student], assignment: str,
               bom: bool = False) -> str:
    """Return Canvas's gradebook import: identity columns, one assignment column, a Points Possible row."""
    rows: list[list[object]] = [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment],
                                ["Points Possible", "", "", "", "", full]]
    for key in sorted(totals):
        s = roster.get(normalize_key(key), Student(key))
        rows.append([s.name or s.student, s.id, s.sis_user_id, s.login, s.section, totals[key]])
    return _csv(rows, bom)


def moodle_csv(totals: Mapping[str, int], roster: Mapping[str, Student], assignment: str, bom: bool = False) -> str:
    """Return a CSV for Moodle's grade import: email address, ID number and full name to map, then the grade."""
    rows: list[list[object]] = [["Email address", "ID number", "Full name", assignment]]
    for key in sorted(totals):
        s = roster.get(normalize_key(key), Student(key))
        rows.append([s.email, s.sis_user_id or s.id, s.name or s.student, totals[key]])
    return _csv(rows, bom)
