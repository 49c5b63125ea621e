"""The grader's gradebook: its own record of finished students, and the long CSV, wide CSV and feedback files it
writes from that record by atomic replacement after each student, under a lock (one writer).

A submission that truncates or deletes the gradebook loses nothing: a file changed behind the grader's back is reported
and rewritten from the record. Each student's rows are signed (HMAC-SHA256, a key kept next to the gradebook, which
isolated kernels cannot see): rows found in the gradebook that this grader did not write, or that were changed, are
never taken as graded; they are reported, dropped from the record (the file as found is kept as GRADEBOOK.untrusted),
and their students graded again. What is and is not protected: docs/grading.md.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import hmac
import io
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import mnist_lesson
from mnist_lesson.config import UsageError
from mnist_lesson.grading.contract import TOTAL, Checks, Row, file_digest

COLUMNS = ["student", "exercise", "points", "max_points", "hints", "message", "version"]  # Row's fields, in order
_UNVERSIONED_COLUMNS = COLUMNS[:-1]  # gradebooks from before the version column (mnist_lesson 0.1.0)
# A cell a spreadsheet would run as a formula (=, +, -, @, or a tab or line break first) is written with a leading
# apostrophe, as OWASP advises; so is a cell that starts with an apostrophe, so that reading strips exactly one.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "'")
BOM = "\ufeff"  # UTF-8's byte-order mark: Excel on Windows reads the file as UTF-8 only with it
_OLD_COLUMNS = ["student", "exercise", "points", "max_points", "message"]  # gradebooks from before hints


def escape_cell(value: object) -> object:
    """Return a CSV cell safe to open in a spreadsheet: text that starts like a formula gets a leading apostrophe."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def unescape_cell(text: str) -> str:
    """Return a cell as it was before `escape_cell`."""
    return text[1:] if text.startswith("'") else text


def safe_row(cells: list[object]) -> list[object]:
    """Return a row of cells, each escaped with `escape_cell`."""
    return [escape_cell(cell) for cell in cells]


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file in the same folder, synced, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _replace_in(folder: int, name: str, text: str) -> None:
    """Write `text` to the file `name` in the open folder `folder` atomically, never through a link."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
        with open(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
    os.fsync(folder)


def feedback_file(student: str) -> str:
    """Return the feedback file name of `student`: the name itself where it is a safe file name, else a hash."""
    if student.isprintable() and "/" not in student and "\\" not in student and not student.startswith(".") \
            and len(student.encode()) <= 200:
        return f"{student}.md"
    return f"student-{hashlib.sha256(student.encode()).hexdigest()[:12]}.md"


def feedback_text(rows: list[Row], checks: Checks) -> str:
    """Return a student's feedback in markdown: the total, how the notebook ran, each exercise's points and message."""
    total, titles = rows[-1], {ex.name: ex.title for ex in checks.exercises}
    lines = [f"# {total.student}: {total.points} of {total.max_points} points", "",
             f"How the notebook ran: {total.message}.", ""]
    if total.hints is not None:
        lines += [f"Hints used: {total.hints}.", ""]
    for row in rows[:-1]:
        lines += [f"## {row.exercise} · {titles.get(row.exercise, '')}: {row.points} of {row.max_points}", "",
                  row.message, ""]
        if row.hints:
            lines += [f"Hints used: {row.hints}.", ""]
    return "\n".join(lines)


SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))  # never written into, whatever links lead there


def check_output(path: Path, what: str, folder: bool = False) -> Path:
    """Return `path` if it can be written as an output file (or folder); raise UsageError before any grading if not:
    only a regular file (or a real folder) or a new name in a real folder, never a link, a device, a pipe, or a path
    under /proc, /sys or /dev."""
    kind = "folder" if folder else "file"
    if path.is_symlink():
        raise UsageError(f"{what} {path} is a symbolic link; give the real {kind} it should be, or another name")
    real = path.resolve()
    if any(real == top or real.is_relative_to(top) for top in SYSTEM_FOLDERS):
        raise UsageError(f"{what} {path} is under {real.parts[0]}{real.parts[1]}, a system folder; choose a {kind} of "
                         "your own")
    if not path.parent.is_dir():
        raise UsageError(f"{what} {path}: the folder {path.parent} does not exist; create it or choose another")
    if path.exists():
        if folder and not path.is_dir():
            raise UsageError(f"{what} {path} is not a folder; choose another")
        if not folder and not path.is_file():
            raise UsageError(f"{what} {path} is not a regular file (a folder, a device or a pipe); choose another")
    return path


class OutputFailed(UsageError):
    """Writing the gradebook failed (a full disk, a quota): the students graded so far are kept in the files."""


class Gradebook:
    """The record of finished students, and the files written from it: `with Gradebook(...) as book:` holds the lock.

    Files: the long CSV (COLUMNS, a TOTAL row per student), a wide CSV (a row per student: points per exercise,
    total, hints) and a markdown feedback file per student."""

    def __init__(self, path: Path, checks: Checks, wide: Path | None = None, feedback: Path | None = None,
                 log: Callable[[str], None] = print, bom: bool = False) -> None:
        self.path, self.checks, self.log, self.bom = check_output(Path(path), "--out"), checks, log, bom
        self.wide = check_output(Path(wide) if wide else self.path.with_name(f"{self.path.stem}-wide.csv"), "--wide")
        self.feedback = check_output(Path(feedback) if feedback else self.path.with_name(f"{self.path.stem}-feedback"),
                                     "--feedback", folder=True)
        self.students: dict[str, list[Row]] = {}
        self.changed = 0  # times a file was found changed behind the grader's back
        self._written: dict[Path, str | None] = {}
        self._lock_fd: int | None = None
        self.key_file = self.path.with_name(f"{self.path.name}.key")  # the signing key, readable by the grader only
        self.signatures = self.path.with_name(f"{self.path.name}.sig")  # {student: HMAC of their rows}
        self._key: bytes | None = None
        self._untrusted = ""  # the gradebook as found, when some of its rows did not verify

    def __enter__(self) -> Gradebook:
        lock = self.path.with_name(f"{self.path.name}.lock")
        try:  # never through a link: a link planted at the lock's name would lock (or create) something else
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot use the lock {lock} ({exc.strerror or exc}: a link or not a file?); remove it "
                             "if no grader runs, or choose another --out") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"the lock {lock} is not a regular file; remove it if no grader runs, or choose another "
                             "--out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"another grader is writing {self.path} (it holds {lock}); wait for it to finish, or "
                             "choose another --out") from None
        self._lock_fd = fd
        try:
            self._key = self._read_key(create=True)
            self._load()
            if self._untrusted:
                _replace(self.path.with_name(f"{self.path.name}.untrusted"), self._untrusted)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    def _read_key(self, create: bool = False) -> bytes | None:
        """Return the signing key (made, 32 random bytes, mode 0600, when `create` and there is none), or None."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.key_file, flags)
        except FileNotFoundError:
            if not create:
                return None
            fd = os.open(self.key_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise UsageError(f"cannot read the gradebook's key {self.key_file} ({exc.strerror or exc}: a link?); "
                             "remove it (its students are then graded again) or choose another --out") from None
        with os.fdopen(fd, "rb") as f:
            key = f.read(1024).strip()
        if len(key) < 32:
            raise UsageError(f"the gradebook's key {self.key_file} is too short to be this grader's; remove it (its "
                             "students are then graded again) or choose another --out")
        return key

    def sign(self, rows: list[Row]) -> str:
        """Return the HMAC-SHA256 of one student's rows (their CSV cells), under this gradebook's key."""
        data = json.dumps([row.cells() for row in rows], ensure_ascii=False).encode()
        return hmac.new(self._key or b"", data, hashlib.sha256).hexdigest()

    def _verify(self, text: str) -> None:
        """Drop from the record every student whose rows do not carry this grader's signature, and say so."""
        try:
            signed = json.loads(self.signatures.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            signed = {}
        signed = signed if isinstance(signed, dict) else {}
        untrusted = sorted(student for student, rows in self.students.items()
                           if self._key is None or not isinstance(signed.get(student), str)
                           or not hmac.compare_digest(signed[student], self.sign(rows)))
        if not untrusted:
            return
        for student in untrusted:
            del self.students[student]
        self._untrusted = text
        self.log(f"rows for {len(untrusted)} student(s) in {self.path} were not written by this grader (forged, "
                 f"edited, or from a grader without signatures): {', '.join(untrusted[:10])}"
                 f"{' ...' if len(untrusted) > 10 else ''}; they are not trusted and are graded again (the file as "
                 f"found is kept in {self.path.name}.untrusted)")

    def _load(self) -> None:
        for target in (self.path, self.wide):
            self._written[target] = file_digest(target)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # Excel's "CSV (Comma delimited)" saves in the Windows code page
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                raise UsageError(f"{self.path} is not a gradebook (neither UTF-8 nor Windows-1252 text); choose "
                                 "another --out") from None
            self.log(f"{self.path} is not UTF-8 (re-saved by Excel?): read as Windows-1252, written back as UTF-8")
        text = text.removeprefix(BOM)
        if not text:
            return
        lines = text.splitlines(keepends=True)
        if not lines[-1].endswith("\n"):  # a torn last row is never taken as graded
            self.log(f"the last row of {self.path} is incomplete (the grader was cut off): its student is graded again")
            lines.pop()
        try:
            records = list(csv.reader(lines))
        except csv.Error as exc:
            raise UsageError(f"{self.path} is not a gradebook ({exc}); choose another --out") from None
        header = records[0] if records else COLUMNS
        if header not in (COLUMNS, _UNVERSIONED_COLUMNS, _OLD_COLUMNS):
            raise UsageError(f"{self.path} is not a gradebook (its header is {header}, expected {COLUMNS}); choose "
                             "another --out")
        unreadable = 0
        for cells in records[1:]:
            item = {key: unescape_cell(cell) for key, cell in zip(header, cells, strict=False)}
            try:
                hints = item.get("hints", "")
                row = Row(item["student"], item["exercise"], int(item["points"]), int(item["max_points"]),
                          int(hints) if hints else None, item["message"], item.get("version", ""))
            except (KeyError, ValueError):
                unreadable += 1
                continue
            self.students.setdefault(row.student, []).append(row)
        if unreadable:
            self.log(f"{unreadable} unreadable row(s) in {self.path} were dropped; their students are graded again")
        if header != COLUMNS and self.students:
            self.log(f"{self.path} was written by a grader older than mnist_lesson {mnist_lesson.__version__} (no "
                     "version column): its rows are not trusted and their students are graded again")
        self._verify(text)
        others = sorted({row.version for rows in self.students.values() for row in rows} - {mnist_lesson.__version__})
        if others:
            self.log(f"some students in {self.path} were graded by mnist_lesson {', '.join(others)}, this grader is "
                     f"{mnist_lesson.__version__}: their rows are kept (--redo grades them again with this one)")

    def complete(self, student: str) -> bool:
        """Return whether `student` has a full, consistent set of rows for the current exercises."""
        rows = self.students.get(student, [])
        expected = [(ex.name, ex.max_points) for ex in self.checks.exercises] + [(TOTAL, self.checks.full)]
        return ([(r.exercise, r.max_points) for r in rows] == expected
                and all(0 <= r.points <= r.max_points for r in rows)
                and rows[-1].points == sum(r.points for r in rows[:-1]))

    def graded(self) -> set[str]:
        """Return the students already graded (a complete set of rows)."""
        return {student for student in self.students if self.complete(student)}

    def record(self, rows: list[Row]) -> None:
        """Add one student's rows (replacing any earlier ones) and write every file from the record."""
        self.students[rows[-1].student] = rows
        self.save([rows[-1].student])

    def _long(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(safe_row(row.cells()) for student in sorted(self.students) for row in self.students[student])
        return (BOM if self.bom else "") + out.getvalue()

    def _wide(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["student"] + [ex.name for ex in self.checks.exercises] + ["total", "hints"])
        for student in sorted(self.students):
            if self.complete(student):
                rows = self.students[student]
                total = rows[-1]
                writer.writerow(safe_row([student] + [r.points for r in rows[:-1]]
                                         + [total.points, "" if total.hints is None else total.hints]))
        return (BOM if self.bom else "") + out.getvalue()

    def save(self, feedback_for: list[str] | None = None) -> None:
        """Write the long and wide CSVs from the record, and the feedback of `feedback_for` (None: everyone);
        a file changed by anything but the grader since it last wrote it is reported, then rewritten. A full disk
        raises OutputFailed, each file left as it was (a temporary file is removed)."""
        try:
            self._save(feedback_for)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutputFailed(f"the disk is full writing {exc.filename or self.path}: free some space, then run "
                                   "the same command again (students already written are kept)") from None
            raise OutputFailed(f"cannot write {exc.filename or self.path}: {exc.strerror or exc}") from None

    def _check_lock(self) -> None:
        """Raise OutputFailed when the lock file this grader holds was deleted or replaced (by a submission?): a second
        grader could then take a lock of its own and write the same gradebook from another record."""
        if self._lock_fd is None:
            return
        lock = self.path.with_name(f"{self.path.name}.lock")
        held = os.fstat(self._lock_fd)
        try:
            now = os.stat(lock, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise OutputFailed(f"the lock {lock} was deleted or replaced while grading (by a submission?), so another "
                               "grader could write this gradebook too: stopped; the students written so far are kept. "
                               "Make sure no other grader runs, then run the same command again")

    def _save(self, feedback_for: list[str] | None) -> None:
        self._check_lock()
        for target, text in ((self.path, self._long()), (self.wide, self._wide())):
            if file_digest(target) != self._written.get(target):
                self.changed += 1
                self.log(f"{target} was changed by something other than this grader (a submission?); rewritten from "
                         "the grader's own record")
            _replace(target, text)
            self._written[target] = hashlib.sha256(text.encode()).hexdigest()
        _replace(self.signatures, json.dumps({student: self.sign(rows) for student, rows in self.students.items()},
                                             ensure_ascii=False, indent=0))
        if self.feedback.is_symlink() or (self.feedback.exists() and not self.feedback.is_dir()):
            self.changed += 1
            self.log(f"{self.feedback} was replaced by a link or a file (a submission?); removed, and a real folder "
                     "made in its place: nothing is written through it")
            self.feedback.unlink()
        self.feedback.mkdir(exist_ok=True)
        # Opened once, never through a link, and every file written relative to it: a folder swapped for a link
        # while the files are written still receives nothing through the link.
        folder = os.open(self.feedback, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for student in self.students if feedback_for is None else feedback_for:
                if self.complete(student):
                    _replace_in(folder, feedback_file(student), feedback_text(self.students[student], self.checks))
        finally:
            os.close(folder)


def graded_students(gradebook: Path, checks: Checks | None = None) -> set[str]:
    """Return the students with a complete set of rows in the gradebook at `gradebook` (read without the lock)."""
    book = Gradebook(gradebook, checks or Checks.load(), log=lambda message: None)
    book._key = book._read_key()
    book._load()
    return book.graded()
