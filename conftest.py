"""Shared test set-up for tests/ and notebooks/: smoke mode for every kernel, verified data fetched once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any kernel starts: nbval's kernels inherit this environment, so every notebook trains
# in smoke mode (1 epoch, a few batches). Unit tests that need full mode unset it themselves.
os.environ["MNIST_LESSON_SMOKE"] = "1"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The default data root, with the four verified MNIST files in it (fetched once if missing)."""
    from mnist_lesson.data import ensure_mnist

    return ensure_mnist(log=lambda message: None).root


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fetch MNIST before any notebook runs: a silent download inside a cell would trip nbval's timeout."""
    if any(item.path.suffix == ".ipynb" for item in session.items):
        from mnist_lesson.data import ensure_mnist

        ensure_mnist()
