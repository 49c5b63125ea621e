"""Colab: the repository address, defined here once, and what every notebook takes from it.

Most students open a notebook from its badge in Colab, alone, with no checkout next to it. So every
notebook has the same first cells, built here: the badge, a setup cell that installs this package from
the repository (and stops "Run all" with one clear error when that fails), and a device cell that says
what the notebook runs on and, on a CPU, how long it took there when recorded. Every notebook's metadata
asks Colab for a GPU runtime.

The notebooks install a pinned release, never a branch head, so the checks a student runs are the checks the
instructor grades with: RELEASE is the git tag `v<version>` of the package's own version. To release, raise
`__version__` in mnist_lesson/__init__.py (pyproject.toml reads it), run `python -m mnist_lesson colab --sync`,
commit, then tag that commit `v<version>` and push the tag. The device cell prints the version a notebook ran
(`runtime_note`), and the grader warns when a submission ran another one than the grader's.

A fork changes REPOSITORY (and, to pin a commit of its own, RELEASE) below and runs
`python -m mnist_lesson colab --sync`; `python -m mnist_lesson colab --check` lists every badge and install
address and whether they agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mnist_lesson

REPOSITORY = "mnist-lesson/mnist-under-20k"  # GitHub owner/name: the one place the address is written
RELEASE = f"v{mnist_lesson.__version__}"  # the git tag (or a commit) every badge opens and every setup cell installs
VERSION_PREFIX = "mnist_lesson "  # how the device cell starts: "mnist_lesson 0.2.0, torch ..."
SETUP_MARKER = "# Colab only:"
DEVICE_MARKER = "# The device this notebook's stored outputs were produced on"
# What Colab reads to offer a GPU runtime when it opens a notebook (and what it writes itself).
COLAB_METADATA: dict[str, Any] = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def repository_url() -> str:
    """Return the repository's web address."""
    return f"https://github.com/{REPOSITORY}"


def install_address() -> str:
    """Return the pip requirement that installs the package from the repository."""
    return f"mnist_lesson @ git+{repository_url()}@{RELEASE}"


def badge(notebook: str, folder: str = "notebooks") -> str:
    """Return the markdown "Open in Colab" badge for FOLDER/NOTEBOOK of the repository."""
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{RELEASE}/{folder}/{notebook}"
    return f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_source(requirement: str | None = None) -> str:
    """Return the first code cell of every notebook: in Colab it installs the package and checks the import;
    anywhere else it does nothing and prints nothing."""
    requirement = requirement or install_address()
    return "\n".join([
        f"{SETUP_MARKER} install the course's helper package from the repository, then check that it imports.",
        "# torch and torchvision stay as Colab has them. Anywhere else this cell does nothing.",
        "import sys",
        "",
        'if "google.colab" in sys.modules:',
        f'    %pip install -q "{requirement}"',
        "    try:",
        "        import mnist_lesson",
        "    except ImportError as error:",
        "        raise RuntimeError(",
        '            "The course package did not install from "',
        f'            "{requirement.split(" @ ")[-1]} (pip says why above). "',
        '            "Check the repository address in mnist_lesson/colab.py (REPOSITORY, RELEASE), or upload the "',
        '            "mnist_lesson folder to this runtime (Files pane), then run this cell again."',
        "        ) from error",
        '    print("installed mnist_lesson", mnist_lesson.__version__)',
    ])


def device_source(notebook: str) -> str:
    """Return the second code cell of every notebook: the device, its threads and, on a CPU, the time to expect."""
    return "\n".join([
        "# NBVAL_IGNORE_OUTPUT",
        f"{DEVICE_MARKER} (they are from one full run, top to bottom),",
        "# and on a CPU how long a full run of this notebook took when it was recorded.",
        "from mnist_lesson.colab import runtime_note",
        "from mnist_lesson.device import pick_device, set_cpu_threads",
        "",
        "device = pick_device()",
        "set_cpu_threads()",
        f"print(runtime_note({notebook!r}, device))",
    ])


def recorded_minutes(notebook: str) -> dict[str, float]:
    """Return the recorded full-run minutes of `notebook` per device (evidence/notebook_times.json)."""
    from mnist_lesson.records import read_notebook_times  # imports torch, which the Colab set-up cell must not need

    times = read_notebook_times()
    return {device: seconds[notebook] / 60 for device, seconds in times.items() if notebook in seconds}


def runtime_note(notebook: str, device: Any) -> str:
    """Return what this notebook runs on and, on a CPU, how long it took there when recorded and how to switch."""
    import torch

    from mnist_lesson.device import describe_device

    lines = [f"{VERSION_PREFIX}{mnist_lesson.__version__}, torch {torch.__version__}, "
             f"running on {describe_device(device)}"]
    if device.type != "cpu":
        return lines[0]
    cpu = {d: m for d, m in recorded_minutes(notebook).items() if d.startswith("cpu")}
    if cpu:
        label, minutes = max(cpu.items(), key=lambda item: item[1])
        lines.append(f"No GPU: a full run of this notebook took {minutes:.1f} min on {label} when it was recorded; "
                     "a slower or busier CPU takes longer.")
    else:
        lines.append("No GPU: no full-run time of this notebook on a CPU had been recorded when this ran (the "
                     "README lists the recorded ones).")
    lines.append("In Colab, Runtime > Change runtime type > T4 GPU makes it faster (the notebook runs the same).")
    return "\n".join(lines)


def reported_version(text: str) -> str | None:
    """Return the mnist_lesson version a device cell's output reports ("mnist_lesson 0.2.0, torch ..."), or None."""
    for line in text.splitlines():
        if line.startswith(VERSION_PREFIX) and ", torch " in line:
            return line[len(VERSION_PREFIX):].split(",", 1)[0].strip() or None
    return None


def notebook_folder(path: Path) -> str:
    """Return the repository folder a notebook's badge points into, from its path."""
    # notebooks/NAME.ipynb -> "notebooks"; notebooks/student/NAME.ipynb -> "notebooks/student"
    parts = path.resolve().parts
    return "/".join(parts[parts.index("notebooks"):-1]) if "notebooks" in parts else "notebooks"


def _badge_cells(nb: Any) -> list[Any]:
    """Return where a badge may sit: the first cell, and a markdown cell right after it (the exercise notebook keeps
    its badge there, so that nbgrader's locked title cell is left as it was)."""
    return [cell for i, cell in enumerate(nb.cells[:2]) if i == 0 or cell.cell_type == "markdown"]


def _code(nb: Any) -> list[Any]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def check_notebook(path: Path) -> list[str]:
    """Return what in a notebook's badge, setup cell, device cell or metadata disagrees with this module."""
    import nbformat  # installed with the package's grading extra; Colab users never call this

    nb = nbformat.read(path, as_version=4)
    problems = []
    expected = badge(path.name, notebook_folder(path))
    if not any(expected in cell.source.splitlines() for cell in _badge_cells(nb)):
        problems.append(f"{path.name}: the first cell (or a badge cell after it) lacks the badge {expected}")
    code = _code(nb)
    if not code or code[0].source != setup_source():
        problems.append(f"{path.name}: the first code cell is not the Colab setup cell of mnist_lesson.colab")
    if len(code) < 2 or code[1].source != device_source(path.name):
        problems.append(f"{path.name}: the second code cell is not the device cell of mnist_lesson.colab")
    if any(nb.metadata.get(key) != value for key, value in COLAB_METADATA.items()):
        problems.append(f"{path.name}: the metadata does not ask Colab for a GPU runtime ({COLAB_METADATA})")
    return problems


def sync_notebook(path: Path) -> bool:
    """Rewrite the badge, the setup and device cells and the Colab metadata from this module; return if it changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    holder = next((cell for cell in _badge_cells(nb) if "colab-badge.svg" in cell.source), nb.cells[0])
    title = holder.source.splitlines()
    badge_lines = [i for i, line in enumerate(title) if "colab-badge.svg" in line]
    code = _code(nb)
    if not badge_lines or len(code) < 2 or not code[0].source.startswith(SETUP_MARKER) \
            or DEVICE_MARKER not in code[1].source:
        raise ValueError(f"{path}: expected a badge line in the first cell, a first code cell starting with "
                         f"{SETUP_MARKER!r} and a second containing {DEVICE_MARKER!r}; add them by hand once, "
                         "then sync")
    before = nbformat.writes(nb)
    title[badge_lines[0]] = badge(path.name, notebook_folder(path))
    holder.source = "\n".join(title)
    code[0].source, code[1].source = setup_source(), device_source(path.name)
    nb.metadata.update(COLAB_METADATA)
    if nbformat.writes(nb) == before:
        return False
    nbformat.write(nb, path)
    return True


def describe_links(paths: Iterable[Path]) -> list[str]:
    """Return one line per notebook with its badge address and install address, and whether both point here."""
    import nbformat

    lines = [f"repository: {repository_url()} (release {RELEASE}), from mnist_lesson/colab.py"]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        found = [line for line in nb.cells[0].source.splitlines() if "colab-badge.svg" in line]
        link = found[0].split("](")[-1].rstrip(")") if found else "no badge"
        code = _code(nb)
        setup = code[0].source if code else ""
        installs = [line.split('"')[1] for line in setup.splitlines() if "%pip install" in line and '"' in line]
        state = "ok   " if not check_notebook(path) else "STALE"
        lines.append(f"{state} {path.name}: badge {link}; installs {installs[0] if installs else 'nothing'}")
    return lines
