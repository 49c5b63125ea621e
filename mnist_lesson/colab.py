"""Colab links: the repository address, defined here once, and the badge and setup cell built from it.

A fork changes REPOSITORY (and BRANCH) below and runs `python -m mnist_lesson colab --sync`; a test
fails while any notebook's badge or setup cell disagrees with this file.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY = "mnist-lesson/mnist-under-20k"  # GitHub owner/name: the one place the address is written
BRANCH = "main"
SETUP_MARKER = "# Colab only:"


def badge(notebook: str, folder: str = "notebooks") -> str:
    """Return the markdown "Open in Colab" badge for FOLDER/NOTEBOOK of the repository."""
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{folder}/{notebook}"
    return f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_source() -> str:
    """Return the first code cell of every notebook: installs the package in Colab, does nothing elsewhere."""
    return (
        f"{SETUP_MARKER} install the course's helper package. torch and torchvision stay as Colab has them\n"
        "# (the package asks for torch>=2.2 and torchvision>=0.17). Anywhere else this cell does nothing.\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    %pip install -q \"mnist_lesson @ git+https://github.com/{REPOSITORY}@{BRANCH}\""
    )


def _folder(path: Path) -> str:
    # notebooks/NAME.ipynb -> "notebooks"; notebooks/student/NAME.ipynb -> "notebooks/student"
    parts = path.resolve().parts
    return "/".join(parts[parts.index("notebooks"):-1]) if "notebooks" in parts else "notebooks"


def check_notebook(path: Path) -> list[str]:
    """Return what in a notebook's badge or setup cell disagrees with this module (empty when in sync)."""
    import nbformat  # a development dependency: Colab users never call this

    nb = nbformat.read(path, as_version=4)
    problems = []
    if badge(path.name, _folder(path)) not in nb.cells[0].source.splitlines():
        problems.append(f"{path.name}: the first cell lacks the badge {badge(path.name, _folder(path))}")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if not code or code[0].source != setup_source():
        problems.append(f"{path.name}: the first code cell is not the Colab setup cell of mnist_lesson.colab")
    return problems


def sync_notebook(path: Path) -> bool:
    """Rewrite the badge line and the setup cell of one notebook from this module; return True if it changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    title = nb.cells[0].source.splitlines()
    badge_lines = [i for i, line in enumerate(title) if "colab-badge.svg" in line]
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if not badge_lines or not code or not code[0].source.startswith(SETUP_MARKER):
        raise ValueError(f"{path}: expected a badge line in the first cell and a first code cell starting with "
                         f"{SETUP_MARKER!r}; add them by hand once, then sync")
    title[badge_lines[0]] = badge(path.name, _folder(path))
    before = (nb.cells[0].source, code[0].source)
    nb.cells[0].source, code[0].source = "\n".join(title), setup_source()
    if (nb.cells[0].source, code[0].source) == before:
        return False
    nbformat.write(nb, path)
    return True
