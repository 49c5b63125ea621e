"""Where a student kernel runs: Linux namespaces that hide the grader's files and fence off its processes.

In mode "namespaces" the kernel launcher (sandbox.main) calls `confine` before it becomes the kernel. Stage one,
a new user, mount and network namespace: every mount is made read-only; the folders the grader names as hidden
(the gradebook's, the submissions, the feedback, the repository or installed package, every kernel's private
folder) get an empty read-only tmpfs over them; the kernel's own private folder is bound back writable and the
grader's private copy of the package read-only; /dev/shm becomes a fresh tmpfs. Stage two, a second user and mount
namespace (which locks those mounts: nothing in it can unmount or remount them, see mount_namespaces(7), "locked
mounts") and a PID namespace, in which the kernel is process 1 under a fresh /proc: it sees no other process, so it
can signal neither the grader nor another kernel. The launcher stays outside as the kernel's parent and passes the
grader's interrupts on. Mode "none" keeps only the limits of sandbox.apply_limits. Everything here is unprivileged
(user namespaces); where the system refuses them, mode "auto" falls back to "none" and the grader says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_lesson.config import UsageError

MODES = ("auto", "namespaces", "none")
MAX_MEMORY_BYTES = 2 * 2**30  # RLIMIT_DATA per kernel: torch imports and trains a small conv net in 1 GiB

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_NOATIME, _MS_NODIRATIME, _MS_REMOUNT, _MS_BIND = 1024, 2048, 32, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
_OPTION_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
                 "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME, "strictatime": _MS_STRICTATIME}
_PR_SET_PDEATHSIG = 1


class IsolationError(OSError):
    """A namespace or mount was refused: the kernel must not start."""


@dataclass(frozen=True)
class Isolation:
    """How the grader's kernels are kept apart from its files and processes (written to a file for the launcher)."""

    mode: str = "none"  # "namespaces" or "none" (resolve() turns "auto" into one of them)
    hidden: tuple[str, ...] = ()  # folders replaced by an empty read-only tmpfs in the kernel's view
    package: str = ""  # a folder holding the private copy of mnist_lesson, bound read-only ("": none)
    visible: tuple[str, ...] = ()  # folders inside hidden ones that kernels need, bound back read-only (the data)
    kernels: str = ""  # the folder every kernel's private folder is made in ("": the system's temporary folder)
    memory: int = MAX_MEMORY_BYTES  # RLIMIT_DATA, bytes (0: no limit); held in every mode


NO_ISOLATION = Isolation()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise IsolationError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc().mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def _map_ids(uid: int, gid: int) -> None:
    """Map this process's own ids in the user namespace it just entered (any user may: user_namespaces(7))."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _mounts() -> list[tuple[str, int]]:
    """Return (mount point, flags to keep) of every mount in this namespace, parents before children."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # octal escapes (\040 for a space)
            flags = sum(_OPTION_FLAGS.get(option, 0) for option in fields[5].split(","))
            found.append((point, flags))
    return found


def _all_read_only(keep: dict[str, tuple[int, bool]]) -> list[str]:
    """Remount every mount read-only; return the mount points that refused and were hidden instead.

    The root must hold. Any other mount that refuses is covered by an empty read-only tmpfs, so it is never left
    writable (a shared /tmp, a data disk), with the kept folders inside it bound back (`keep`, as `_hide`). /proc is
    skipped (a fresh one replaces it) and a part of /sys or /dev that refuses is left as it is (kernel interfaces,
    not the grader's files). Raises IsolationError when a mount can be neither remounted nor hidden."""
    hidden = []
    for point, flags in _mounts():
        if _inside(point, "/proc"):  # the ids of the second namespace are written there; a fresh one replaces it
            continue
        try:
            _mount(None, point, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | flags)
        except IsolationError:
            if point == "/":
                raise
            if _inside(point, "/sys") or _inside(point, "/dev"):
                continue
            if any(_inside(point, done) for done in hidden):  # under a mount hidden already
                continue
            try:
                _hide(point, keep)
            except IsolationError as exc:
                raise IsolationError(f"{point} cannot be made read-only or hidden in the kernel's namespace "
                                     f"({exc}): student code could write to it") from None
            hidden.append(point)
    return hidden


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _hide(folder: str, bring_back: dict[str, tuple[int, bool]]) -> None:
    """Put an empty tmpfs over `folder`, bind the kept folders inside it back (path: (open fd, writable)), and make
    the tmpfs read-only."""
    _mount("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k")
    for path, (fd, writable) in bring_back.items():
        if _inside(path, folder) and path != folder:
            os.makedirs(path, exist_ok=True)
            _bind(fd, path, writable)
    _mount(None, folder, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _bind(fd: int, path: str, writable: bool) -> None:
    _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND)
    _mount(None, path, None, _MS_BIND | _MS_REMOUNT | _MS_NOSUID | _MS_NODEV | (0 if writable else _MS_RDONLY))


def confine(isolation: Isolation, private: str) -> None:
    """Enter the namespaces and mounts of `isolation` (private: the kernel's own folder, left writable); return in
    the kernel (process 1 of its PID namespace). The launcher stays outside as its parent and exits with the kernel's
    status. Raises IsolationError (or OSError) where the system refuses, before any fork."""
    uid, gid, parent = os.getuid(), os.getgid(), os.getppid()
    _unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET)
    _map_ids(uid, gid)
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing mounted here reaches the grader's namespace
    hidden = sorted({str(Path(h)) for h in isolation.hidden if os.path.isdir(h) and h != "/"}, key=len)
    keep = {path: False for path in isolation.visible
            if os.path.isdir(path) and not any(_inside(h, path) for h in hidden)}  # hidden wins
    keep.update({private: True, **({isolation.package: False} if isolation.package else {})})
    fds = {path: (os.open(path, os.O_PATH | os.O_DIRECTORY), writable) for path, writable in keep.items()}
    _all_read_only(fds)  # a mount that cannot be made read-only is hidden, the kept folders in it bound back
    for folder in hidden:
        if not any(_inside(folder, outer) for outer in hidden if outer != folder):  # nested ones are hidden already
            _hide(folder, fds)
    for path, (fd, writable) in fds.items():
        if not any(_inside(path, folder) for folder in hidden):
            _bind(fd, path, writable)
        os.close(fd)
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
    # A second user namespace locks every mount above (it cannot be undone from inside); a PID namespace of its own.
    _unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID)
    _map_ids(uid, gid)
    pid = os.fork()
    if pid == 0:
        _check(_libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        os.setsid()  # kill(0, ...) in the kernel then reaches its own group only, never the launcher's
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        return
    # Set again here: entering a user namespace cleared it. A grader gone before that: end the kernel now.
    if _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os.kill(pid, signal.SIGKILL)
        os._exit(1)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the grader interrupts the launcher: pass it on
        signal.signal(signum, lambda s, _frame: os.kill(pid, s))
    while True:
        with contextlib.suppress(InterruptedError, ChildProcessError):
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) % 256)


def resolve(mode: str, hidden: list[Path], visible: list[Path], folder: Path, memory: int,
            log: Callable[[str], None]) -> Isolation:
    """Return the Isolation of `mode` ("auto", "namespaces" or "none"): in namespaces, `hidden` and `folder` (the
    run's own folder: kernels' private folders and the package copy made here) hidden, `visible` bound back. Raises
    UsageError when "namespaces" cannot work here; "auto" then falls back to "none" and warns through `log`."""
    if mode not in MODES:
        raise UsageError(f"--isolation {mode!r} is not a mode; choose one of {', '.join(MODES)}")
    if mode == "none":
        return Isolation("none", memory=memory)
    works, why = namespaces_work()
    if not works:
        if mode == "namespaces":
            raise UsageError(f"--isolation namespaces does not work here ({why}); use --isolation none (rlimits only) "
                             "or grade inside a container")
        log(f"WARNING: student kernels are NOT isolated ({why}): they can read and write what the grader can and "
            "signal it and each other; only the rlimits hold. Grade inside a container, or pass --isolation none")
        return Isolation("none", memory=memory)
    (folder / "kernels").mkdir()
    package = private_package(folder / "package")
    return Isolation("namespaces", tuple(str(Path(h).resolve()) for h in [*hidden, folder]), package,
                     tuple(str(Path(v).resolve()) for v in visible), str(folder / "kernels"), memory)


def namespaces_work() -> tuple[bool, str]:
    """Return whether a kernel can be confined on this machine (a probe launcher is started to try), and why not."""
    if not sys.platform.startswith("linux"):
        return False, "Linux namespaces are needed"
    with tempfile.TemporaryDirectory(prefix="mnist-probe-") as folder:
        os.mkdir(os.path.join(folder, "own"))
        Path(folder, "seen").touch()  # hidden: the probe must not see it
        probe = subprocess.run([sys.executable, "-m", "mnist_lesson.grading.isolation", folder], capture_output=True,
                               text=True, timeout=60)
    if probe.returncode == 0 and probe.stdout.strip() == "confined":
        return True, ""
    return False, (probe.stderr.strip().splitlines() or ["the probe failed"])[-1][:200]


def private_package(folder: Path) -> str:
    """Copy this package's modules into `folder` (compiled, then made read-only); return the folder for PYTHONPATH."""
    import compileall

    import mnist_lesson

    source = Path(mnist_lesson.__file__).parent
    shutil.copytree(source, folder / "mnist_lesson", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compileall.compile_dir(folder / "mnist_lesson", quiet=1)
    return str(folder)


def package_source() -> list[Path]:
    """Return what to hide of the installed package: its folder, and the source checkout around it if there is one
    (the repository, with instructor/ and its solutions)."""
    import mnist_lesson

    package = Path(mnist_lesson.__file__).resolve().parent
    repo = package.parent
    return [package, repo] if (repo / "pyproject.toml").exists() or (repo / ".git").exists() else [package]


def write_spec(isolation: Isolation, path: Path) -> None:
    """Write `isolation` where the launcher reads it."""
    path.write_text(json.dumps(asdict(isolation)))


def read_spec(path: str) -> Isolation:
    """Return the Isolation written by `write_spec`."""
    with open(path) as f:
        data = json.load(f)
    return Isolation(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


if __name__ == "__main__":  # the probe of namespaces_work: `python -m mnist_lesson.grading.isolation FOLDER`
    try:
        confine(Isolation("namespaces", (sys.argv[1],)), os.path.join(sys.argv[1], "own"))
    except OSError as exc:
        print(f"namespaces refused: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    print("confined" if os.getpid() == 1 and not os.path.exists(os.path.join(sys.argv[1], "seen")) else "not alone")
