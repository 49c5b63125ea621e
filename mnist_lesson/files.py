"""Small helpers for the files the package writes: atomic writes with the umask's permissions, the error a data
fetch raises, and the version of the package's own code that every recorded run names.

Used by the MNIST fetch (`data`, `pypi_fallback`), the training history and the recorded evidence. Introduced
in notebook 00.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
from pathlib import Path


class DataError(RuntimeError):
    """MNIST could not be fetched or verified; the message says which file, what was tried and what to do."""


def create_temporary(path: Path) -> tuple[int, Path]:
    """Create and open a new temporary file next to `path` (named .NAME.HEX.tmp); return (descriptor, its path).

    Like tempfile.mkstemp, but created with mode 0o666 so the umask (and any default ACL) applies as to any new
    file; mkstemp's 0o600 would make files in a shared data folder unreadable to everyone else.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_file_mode(folder: Path) -> int:
    """Return the permission bits a newly created file in `folder` gets (umask, default ACLs), read off a probe."""
    fd, probe = create_temporary(folder / "mode-probe")
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def code_version() -> str:
    """Return the version of the package's code: "git SHA" (+ " dirty" with uncommitted changes) in a checkout,
    else a hash of its source files."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top and (Path(top) / package.name).resolve() == package:
        # The package's code only: the evidence folder, which the benchmarks write, does not make it dirty.
        sha, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", ".", ":!evidence")
        if sha is not None and changes is not None:
            return f"git {sha[:12]}" + (" dirty" if changes else "")
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):  # grading/ included
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return f"source sha256 {digest.hexdigest()[:16]}"
