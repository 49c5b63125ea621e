"""The package's file helpers: atomic writes with the umask's permissions, and the code version runs record."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mnist_lesson.files import atomic_write, code_version


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, b"good")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"half-written")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_write_gives_the_permissions_of_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    previous = os.umask(mask)
    try:
        atomic_write(tmp_path / "new.bin", b"data")
        (tmp_path / "old.bin").write_bytes(b"old")
        atomic_write(tmp_path / "old.bin", b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "old.bin").stat().st_mode) == mode


def test_the_code_version_names_a_commit_or_a_hash_of_the_sources() -> None:
    assert code_version().startswith(("git ", "source sha256 "))
