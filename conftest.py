"""Shared test set-up for tests/, notebooks/ and instructor/: smoke mode, verified data, and the student's kernel.

Every notebook is executed once per `pytest` run, by nbval, in the kernel a Colab student has: the package
built as a wheel and installed into a folder of its own, a Python started with `-S` (so the checkout's
editable install is not seen), smoke mode on. nbval compares the outputs with the stored ones; a cell that
writes a file next to its notebook fails. The same installation serves tests/test_colab.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# Set before any kernel starts: nbval's kernels inherit this environment, so every notebook trains
# in smoke mode (1 epoch, a few batches). Unit tests that need full mode unset it themselves.
os.environ["MNIST_LESSON_SMOKE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (`-n auto` in pyproject.toml): one thread each, for this process and
    # every kernel or Python it starts, so the workers do not wait on each other's threads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent
STUDENT_KERNEL = "colab-student"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


@dataclass(frozen=True)
class StudentInstall:
    """The package as a Colab student gets it: a wheel installed into `target`, and a kernel that sees only that."""

    wheel: Path
    target: Path
    jupyter: Path  # a JUPYTER_PATH holding the kernel spec STUDENT_KERNEL
    python_path: str  # the kernel's PYTHONPATH: `target`, then the third-party packages


def build_student_install(base: Path) -> StudentInstall:
    """Build the wheel from a copy of the package's sources, install it under `base` and define the kernel."""
    wheels, target, source = base / "wheels", base / "site", base / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "mnist_lesson", source / "mnist_lesson",
                    ignore=shutil.ignore_patterns("__pycache__", "*.lock"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(source)], check=True, timeout=600)
    (wheel,) = wheels.glob("mnist_lesson-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, timeout=600)
    python_path = os.pathsep.join([str(target), SITE_PACKAGES])
    kernel = base / "jupyter" / "kernels" / STUDENT_KERNEL
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "a Colab student", "language": "python", "env": {"PYTHONPATH": python_path}}))
    return StudentInstall(wheel, target, base / "jupyter", python_path)


_INSTALL: StudentInstall | None = None


def student_install() -> StudentInstall:
    """Return this session's student installation, built on first use and removed when the session ends."""
    global _INSTALL
    if _INSTALL is None:
        _INSTALL = build_student_install(Path(tempfile.mkdtemp(prefix="mnist-lesson-student-")))
    return _INSTALL


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, compute with one torch thread in each worker."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def installed() -> StudentInstall:
    """The package installed from its wheel, as a Colab student has it, with a kernel that sees only that copy."""
    return student_install()


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The default data root, with the four verified MNIST files in it (fetched once if missing)."""
    from mnist_lesson.data import ensure_mnist

    return ensure_mnist(log=lambda message: None).root


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


_NOTEBOOK_FOLDERS: dict[Path, set[str]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every notebook cell belongs to the slow tier: `pytest -m "not slow"` runs no notebook."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before any notebook runs: fetch MNIST (a silent download inside a cell would trip nbval's timeout), and
    point nbval at the student's kernel."""
    notebooks = {item.path for item in session.items if item.path.suffix == ".ipynb"}
    if not notebooks:
        return
    from mnist_lesson.data import ensure_mnist

    ensure_mnist()
    install = student_install()
    os.environ["JUPYTER_PATH"] = str(install.jupyter)
    session.config.option.nbval_current_env = False
    session.config.option.nbval_kernel_name = STUDENT_KERNEL
    for path in notebooks:
        _NOTEBOOK_FOLDERS[path.parent] = _listing(path.parent)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Fail a notebook cell that left a file next to its notebook: outside a checkout nothing may be written."""
    outcome = yield
    report = outcome.get_result()
    folder = item.path.parent
    if call.when != "call" or item.path.suffix != ".ipynb" or folder not in _NOTEBOOK_FOLDERS or report.failed:
        return
    new = sorted(_listing(folder) - _NOTEBOOK_FOLDERS[folder])
    if new:
        report.outcome = "failed"
        report.longrepr = (f"this cell wrote {new} next to {item.path.name}; a notebook run outside a checkout "
                           "(as in Colab) must not write files beside itself")
        _NOTEBOOK_FOLDERS[folder] |= set(new)  # report it once


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the student installation."""
    if _INSTALL is not None:
        shutil.rmtree(_INSTALL.jupyter.parent, ignore_errors=True)
