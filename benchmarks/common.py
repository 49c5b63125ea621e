"""What every benchmark script shares: refusing smoke mode, naming the device, and a lock for shared files.

Benchmarks measure full runs; a smoke run (MNIST_LESSON_SMOKE=1) would time a few batches and record
nonsense, so every script refuses it before doing anything. The one way through is a smoke check of a script's
plumbing (its `--smoke-check`, as `benchmarks/gpu_check.sh --cpu-smoke` runs it): tiny runs whose results go to an
explicit file outside mnist_lesson/evidence/ and say `"smoke": true`. Where each result goes, and how it is read and
written, is `mnist_lesson.records`' business.
"""

from __future__ import annotations

import fcntl
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mnist_lesson.config import smoke_mode
from mnist_lesson.device import describe_device, set_cpu_threads

REPO = Path(__file__).resolve().parents[1]


def refuse_smoke_mode(what: str, check: bool = False, out: Path | None = None) -> bool:
    """Exit with status 2 and one line when $MNIST_LESSON_SMOKE asks for smoke runs; return whether they run.

    Smoke runs go through only as a smoke check (`check`, a script's --smoke-check) that writes its results to
    `out`, a file outside mnist_lesson/evidence/: the script then makes tiny runs and marks its file smoke.
    """
    if not smoke_mode():
        return False
    if not check:
        print(f"MNIST_LESSON_SMOKE is set: {what}; unset it", file=sys.stderr)
        raise SystemExit(2)
    from mnist_lesson.records import evidence

    if out is None or Path(out).resolve().is_relative_to(evidence().resolve()):
        print("MNIST_LESSON_SMOKE is set: a smoke check writes only to a results file outside "
              f"{evidence()}; name one", file=sys.stderr)
        raise SystemExit(2)
    return True


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads in this process (None: torch's choice); one each lets two runs share 2 cores."""
    if threads is not None:
        set_cpu_threads(threads)


def where(device: torch.device) -> str:
    """Return the device, the machine's architecture and the torch version, as results files name them."""
    return f"{describe_device(device)}, {platform.machine()}, torch {torch.__version__}"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on PATH.lock while the block runs, so two processes never write `path` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
