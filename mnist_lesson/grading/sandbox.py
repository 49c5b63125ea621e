"""Run student code in a Jupyter kernel under a wall-time limit, and leave nothing of it behind.

The grader (grader.py) starts each kernel through this module: `python -m mnist_lesson.grading.sandbox
CONNECTION_FILE` sets resource limits (file size, open files, processes, no core dumps), tries to give the kernel
its own user and network namespaces (no network; Linux only, falling back silently where the system refuses), asks
to be killed if the grader dies, and then becomes an IPython kernel. `Sandbox` runs cells in such a kernel and reads
only their execute replies (never the output stream, so output of any size costs the grader nothing), interrupts
a step at its time limit, kills the kernel a few seconds later if the interrupt is ignored, and at the end kills
every process the submission started: those carrying its marker in their environment, the kernel's descendants,
and orphans re-parented to the grader (a child subreaper, Linux) that belong to no live kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mnist_lesson.grading.isolation import NO_ISOLATION, Isolation, confine, read_spec, write_spec

MARKER_ENV = "MNIST_LESSON_GRADING"  # every process a submission starts inherits it: "GRADER_PID:TOKEN"
MAX_FILE_BYTES = 512 * 1024 * 1024  # RLIMIT_FSIZE: no single file written larger than this
MAX_OPEN_FILES = 4096  # RLIMIT_NOFILE
MAX_PROCESSES = 512  # RLIMIT_NPROC: processes and threads of the user (never binds root)
KERNEL_START_SECONDS = 120.0  # a kernel that is not ready by then is the grader's problem, not the student's
POLL_SECONDS = 0.1
PROBE_SECONDS = 1.0  # after an interrupt with no reply, when to ask whether the kernel is idle

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 1, 36, 37


class Stopped(Exception):
    """Grading was asked to stop (Ctrl-C): the kernel was killed and nothing of this run counts."""


class KernelStartError(RuntimeError):
    """The kernel did not start: a problem of the grading machine, never of the submission."""


# --- the launcher: limits and namespaces, then an IPython kernel ------------------------------------------


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _set_limit(name: str, value: int) -> bool:
    kind = getattr(resource, name, None)
    if kind is None:
        return False
    try:
        soft, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))
        return True
    except (ValueError, OSError):
        return False


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _user_tasks() -> int:
    """Return how many processes and threads this user runs now (what RLIMIT_NPROC counts)."""
    uid, total = os.getuid(), 0
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.name.isdigit() and entry.stat().st_uid == uid:
                    with open(f"/proc/{entry.name}/status") as f:
                        total += int(next(line for line in f if line.startswith("Threads:")).split()[1])
    return total


def _own_namespaces() -> str:
    """Try a new user and network namespace, else a network namespace alone; return which ("" if none)."""
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return ""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        try:  # map our own ids, so files keep their owner and the kernel keeps its user's rights, no more
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError:
            pass
        return "user+net"
    if libc.unshare(_CLONE_NEWNET) == 0:  # allowed to root where user namespaces are not
        return "net"
    return ""


def apply_limits(isolation: Isolation = NO_ISOLATION, private: str = "") -> dict[str, object]:
    """Set this process's resource limits and namespaces for a student kernel; return what holds. In mode
    "namespaces" the kernel is confined (isolation.confine) first, `private` its own folder: the launcher that
    called this then stays outside as the kernel's parent and never returns from here."""
    root = os.geteuid() == 0  # before the namespaces, in which we may look like root to ourselves
    if isolation.mode == "namespaces":
        confine(isolation, private)
        namespaces = "user+net+mount+pid"
    else:
        namespaces = _own_namespaces()
    held = {
        "network": "net" in namespaces,
        "user_namespace": "user" in namespaces,
        "namespaces": isolation.mode == "namespaces",
        "memory": bool(isolation.memory) and _set_limit("RLIMIT_DATA", isolation.memory),
        "file_size": _set_limit("RLIMIT_FSIZE", MAX_FILE_BYTES),
        "open_files": _set_limit("RLIMIT_NOFILE", MAX_OPEN_FILES),
        # Counted per user (per user and namespace inside a new user namespace); root is exempt.
        "processes": not root and _set_limit("RLIMIT_NPROC", MAX_PROCESSES + (0 if "user" in namespaces
                                                                              else _user_tasks())),
        "core_dumps": _set_limit("RLIMIT_CORE", 0),
    }
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux") and isolation.mode != "namespaces":
        # Set last: a change of credentials clears it (confine sets it in the launcher, outside the kernel's namespace).
        held["dies_with_grader"] = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        grader = os.environ.get(MARKER_ENV, "").split(":")[0]
        if grader.isdigit() and os.getppid() != int(grader):  # the grader died before prctl: stop now
            os._exit(1)
    return held


def describe_isolation(isolation: Isolation = NO_ISOLATION) -> str:
    """Return one line saying which limits a student kernel runs under on this machine (started once to see)."""
    with tempfile.TemporaryDirectory(prefix="mnist-probe-") as folder:
        spec = Path(folder) / "isolation.json"
        write_spec(isolation, spec)
        probe = subprocess.run([sys.executable, "-m", "mnist_lesson.grading.sandbox", "--probe", str(spec)],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, MARKER_ENV: f"{os.getpid()}:probe"})
    try:
        held = json.loads(probe.stdout)
    except ValueError:
        return "kernel limits unknown (the probe failed)"
    parts = [("its own namespaces: the grader's files, other submissions and the package source hidden, the file "
              "system read-only but for its own folder, no other process visible" if held.get("namespaces")
              else "NO isolation from the grader's files and processes (--isolation none)"),
             ("no network" if held.get("network") else "network NOT blocked (no network namespace allowed here)"),
             (f"memory up to {isolation.memory / 2**30:g} GiB" if held.get("memory") else "no memory limit"),
             f"files up to {MAX_FILE_BYTES // 2**20} MiB" if held.get("file_size") else "no file size limit",
             f"{MAX_OPEN_FILES} open files" if held.get("open_files") else "no open-file limit",
             f"{MAX_PROCESSES} processes" if held.get("processes") else "process limit not binding (root)"]
    return "student kernels run with " + ", ".join(parts)


def main(argv: list[str]) -> None:
    """Launch a student kernel: `python -m mnist_lesson.grading.sandbox CONNECTION_FILE [ISOLATION_FILE]` (or
    `--probe [ISOLATION_FILE]`, which prints what holds)."""
    probe = argv[:1] == ["--probe"]
    spec = argv[1] if len(argv) > 1 else ""
    isolation = read_spec(spec) if spec else NO_ISOLATION
    private = os.path.dirname(spec) or tempfile.gettempdir()
    try:
        held = apply_limits(isolation, private)
    except OSError as exc:  # the grader reads why from this file (the launcher's output goes nowhere)
        Path(private, "launcher-error.txt").write_text(f"{exc.strerror or exc}"[:300])
        sys.exit(1)
    if probe:
        print(json.dumps(held), flush=True)
        return
    # No history database (nothing of one submission reaches the next), and the connection file from the grader.
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", argv[0],
                              "--HistoryManager.enabled=False"])


# --- processes: the grader as subreaper, and killing everything a submission started ------------------------

_LOCK = threading.RLock()  # held while a kernel is launched and while processes are scanned and killed
_LIVE: dict[str, int] = {}  # marker -> kernel pid of every running sandbox in this process
_REAPING = {"depth": 0, "before": 0, "children": frozenset()}


def _subreaper(flag: int) -> int | None:
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return None
    old = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(old), 0, 0, 0)
    return old.value if libc.prctl(_PR_SET_CHILD_SUBREAPER, flag, 0, 0, 0) == 0 else None


def _processes() -> dict[int, tuple[int, bytes, bytes]]:
    """Return {pid: (parent pid, state, marker)} for every process this user can see in /proc."""
    found = {}
    prefix = MARKER_ENV.encode() + b"="
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2:].split()  # the name in parentheses may hold spaces
            state, ppid = fields[0], int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
        marker = b""
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                marker = next((item[len(prefix):] for item in f.read().split(b"\0") if item.startswith(prefix)), b"")
        found[int(entry.name)] = (ppid, state, marker)
    return found


@contextlib.contextmanager
def reaping() -> Iterator[bool]:
    """Make this process the subreaper of everything it starts, for the block; yield whether that works here."""
    with _LOCK:
        if _REAPING["depth"] == 0:
            _REAPING["before"] = _subreaper(1)
            children = {pid for pid, (ppid, _, _) in _processes().items() if ppid == os.getpid()} \
                if os.path.isdir("/proc") else set()
            _REAPING["children"] = frozenset(children)  # ours before grading: never taken for orphans
        _REAPING["depth"] += 1
    try:
        yield _REAPING["before"] is not None
    finally:
        with _LOCK:
            _REAPING["depth"] -= 1
            if _REAPING["depth"] == 0 and _REAPING["before"] is not None:
                _subreaper(int(_REAPING["before"]))


def _descendants(roots: set[int], procs: Mapping[int, tuple[int, bytes, bytes]]) -> set[int]:
    """Return `roots` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def end_processes(marker: str, kernel_pid: int | None = None, seconds: float = 10.0) -> int:
    """Kill every process of one submission (its marker, the kernel's descendants, orphans of no live kernel);
    return how many were killed."""
    if not os.path.isdir("/proc"):  # no /proc (macOS): the kernel's process group is all that can be found
        if kernel_pid:
            with contextlib.suppress(OSError):
                os.killpg(kernel_pid, signal.SIGKILL)
        return 0
    me, mine, killed = os.getpid(), marker.encode(), set()
    deadline = time.monotonic() + seconds
    while True:
        with _LOCK:
            procs = _processes()
            live = {m.encode() for m in _LIVE if m != marker}
            kernels = set(_LIVE.values())
            roots = {pid for pid, (_, _, m) in procs.items() if m == mine}
            if kernel_pid in procs:
                roots.add(kernel_pid)
            if _REAPING["depth"]:  # orphans re-parented to us that no live kernel claims
                roots |= {pid for pid, (ppid, _, m) in procs.items()
                          if ppid == me and pid not in kernels and m not in live and pid not in _REAPING["children"]}
            victims = _descendants(roots, procs) - {me}
            for pid in victims:
                if procs.get(pid, (0,))[0] == me and pid not in kernels:  # reap our zombies (Popen reaps kernels)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
            living = {pid for pid in victims if procs.get(pid, (0, b"Z"))[1] != b"Z"}
            for pid in living:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= living
        if not living or time.monotonic() > deadline:
            return len(killed)
        time.sleep(0.02)


def sweep_leftovers() -> int:
    """Kill processes left by graders that died (their marker names a grader that is gone); return how many."""
    if not os.path.isdir("/proc"):
        return 0
    markers = {m.decode(errors="replace") for _, _, m in _processes().values() if m}
    gone = {m for m in markers if m.split(":")[0].isdigit() and not os.path.exists(f"/proc/{m.split(':')[0]}")}
    return sum(end_processes(m) for m in gone)


# --- a kernel that runs steps of cells under time limits -----------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Cells that share one wall-time limit (seconds from the step's first cell to the end of its last)."""

    name: str
    sources: list[str]
    seconds: float


@dataclass(frozen=True)
class Reply:
    """How one cell ended: "ok" or "error", and for an error its type and (shortened) message."""

    status: str
    ename: str = ""
    evalue: str = ""

    def describe(self) -> str:
        """Return "Type: message", shortened."""
        text = " ".join(f"{self.ename}: {self.evalue}".split())
        return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class StepResult:
    """What happened to one step: the replies of the cells that ran, and why it stopped early, if it did."""

    replies: list[Reply] = field(default_factory=list)
    stopped: str = ""  # "" ran to the end; "time" interrupted at the limit; "killed" ignored the interrupt;
    #                    "died" the kernel ended by itself; "not run" the kernel was gone before the step began
    seconds: float = 0.0
    planned: int = 0


def _rmtree(path: Path) -> None:
    def retry(func, target, _exc):  # type: ignore[no-untyped-def]  # folders a notebook made read-only
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)

    shutil.rmtree(path, onerror=retry)


class Sandbox:
    """One kernel's private folder and lifetime: `with Sandbox(env) as box: box.run(steps)`."""

    def __init__(self, env: Mapping[str, str], stop: threading.Event | None = None, grace: float = 10.0,
                 isolation: Isolation = NO_ISOLATION) -> None:
        self.stop = stop or threading.Event()
        self.grace = grace  # seconds between the interrupt at a limit and the kill
        self.isolation = isolation
        # Never named after the student; in the run's own folder, which other kernels see empty.
        self.private = Path(tempfile.mkdtemp(prefix="mnist-grade-", dir=isolation.kernels or None))
        self.workdir = self.private / "work"
        self.marker = f"{os.getpid()}:{secrets.token_hex(8)}"
        for sub in ("work", "tmp", "ipython"):
            (self.private / sub).mkdir()
        self.env = {**env, MARKER_ENV: self.marker, "TMPDIR": str(self.private / "tmp"),
                    "IPYTHONDIR": str(self.private / "ipython")}  # no startup files a notebook could plant
        if isolation.package:  # the private read-only copy first, the source folder being hidden
            self.env["PYTHONPATH"] = os.pathsep.join([isolation.package, *filter(None, [env.get("PYTHONPATH")])])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill everything the kernel started, then remove the private folder."""
        self._end()
        _rmtree(self.private)

    def _end(self) -> None:
        pid = self.proc.pid if self.proc else None
        with _LOCK:
            _LIVE.setdefault(self.marker, pid or -1)  # until it is gone, nobody else takes ours for orphans
        try:
            end_processes(self.marker, pid)
            if self.proc:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
        finally:
            with _LOCK:
                _LIVE.pop(self.marker, None)

    def _start(self, shell) -> object:  # type: ignore[no-untyped-def]
        """Launch the kernel and connect `shell` to it; return the session once the kernel answers."""
        # Imported here, not at the top: the launcher (this module's main) runs before every kernel and needs neither.
        from jupyter_client.session import Session

        key = secrets.token_hex(16)
        prefix = str(self.private / "k")  # unix sockets: they reach a kernel in its own network namespace
        connection = self.private / "kernel.json"
        connection.write_text(json.dumps({"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
                                          "hb_port": 5, "ip": prefix, "key": key, "transport": "ipc",
                                          "signature_scheme": "hmac-sha256", "kernel_name": ""}))
        spec = self.private / "isolation.json"
        write_spec(self.isolation, spec)
        with _LOCK:  # no scan may see the child between fork and exec, without its marker
            _LIVE[self.marker] = -1
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mnist_lesson.grading.sandbox", str(connection), str(spec)], cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C at the grader's terminal never reaches student code
            _LIVE[self.marker] = self.proc.pid
        shell.connect(f"ipc://{prefix}-1")
        session = Session(key=key.encode())
        end, asked = time.monotonic() + KERNEL_START_SECONDS, 0.0
        while True:
            if self.stop.is_set():
                raise Stopped
            if self.proc.poll() is not None:
                error = self.private / "launcher-error.txt"
                why = f": {error.read_text()[:300]}" if error.exists() else ""
                raise KernelStartError(f"the kernel exited while starting (status {self.proc.returncode}{why})")
            if time.monotonic() > end:
                raise KernelStartError(f"the kernel was not ready after {KERNEL_START_SECONDS:.0f} s")
            if time.monotonic() - asked > 1:
                session.send(shell, "kernel_info_request", {})
                asked = time.monotonic()
            if shell.poll(int(POLL_SECONDS * 1000)):
                _, msg = session.recv(shell)
                if msg and msg["msg_type"] == "kernel_info_reply":
                    return session

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.proc.pid, signum)

    def _execute(self, shell, session, source: str, deadline: float) -> tuple[Reply | None, str]:  # type: ignore[no-untyped-def]
        """Run one cell; return its reply (None if it never came) and "", "time", "killed" or "died"."""
        request = session.send(shell, "execute_request", {
            "code": source, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False,
            "stop_on_error": False})
        msg_id, interrupted, probe = request["header"]["msg_id"], None, None
        while True:
            if self.stop.is_set():
                self._signal(signal.SIGKILL)
                raise Stopped
            now = time.monotonic()
            if interrupted is None and now >= deadline:
                self._signal(signal.SIGINT)  # KeyboardInterrupt in the cell
                interrupted = now
            elif interrupted is not None and probe is None and now >= interrupted + PROBE_SECONDS:
                # An interrupt that lands as the cell ends can cost the kernel its reply (ipykernel raises it in its
                # own code). A kernel that answers this request is idle: the cell is over, only its reply is lost.
                probe = session.send(shell, "kernel_info_request", {})["header"]["msg_id"]
            elif interrupted is not None and now >= interrupted + self.grace:
                self._signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
                return None, "killed"
            if self.proc.poll() is not None:
                return None, "died"
            if shell.poll(int(POLL_SECONDS * 1000)):
                try:
                    _, msg = session.recv(shell)
                    if probe is not None and msg["msg_type"] == "kernel_info_reply" and \
                            msg["parent_header"].get("msg_id") == probe:
                        return None, "time"  # stopped at the limit; the kernel lives on for the next step
                    if msg["msg_type"] != "execute_reply" or msg["parent_header"].get("msg_id") != msg_id:
                        continue  # a late answer to a kernel_info_request sent while the kernel started
                    content = msg["content"]
                    reply = Reply(str(content.get("status")), str(content.get("ename", ""))[:100],
                                  str(content.get("evalue", ""))[:300])
                except Exception:  # json or hmac replaced inside the kernel: the reply to this cell, unreadable
                    reply = Reply("error", "UnreadableReply", "the kernel's reply could not be read (its messaging "
                                  "was tampered with)")
                return reply, "time" if interrupted is not None else ""

    def run(self, steps: list[Step]) -> list[StepResult]:
        """Start the kernel, run the steps in order, then end every process it started; return one result a step."""
        import zmq  # here, not at the top: see _start

        results = [StepResult(planned=len(step.sources)) for step in steps]
        context = zmq.Context()
        try:
            shell = context.socket(zmq.DEALER)
            shell.linger = 0
            session = self._start(shell)
            alive = True
            for step, result in zip(steps, results, strict=True):
                if not alive:
                    result.stopped = "not run"
                    continue
                start = time.monotonic()
                deadline = start + step.seconds
                for source in step.sources:
                    if time.monotonic() >= deadline:  # the limit is the step's wall time: no cell starts after it
                        result.stopped = "time"
                        break
                    reply, why = self._execute(shell, session, source, deadline)
                    if reply is not None:
                        result.replies.append(reply)
                    if why:
                        result.stopped = why
                        alive = why == "time"
                        break
                result.seconds = time.monotonic() - start
        finally:
            context.destroy(linger=0)
            self._end()
        return results


if __name__ == "__main__":
    main(sys.argv[1:])
