"""docs/contributing.md's walk-through, followed on a throw-away copy: a model `nine` and a notebook 10.

The code the walk-through shows is taken from the page itself and put where it says, so the page and the
code cannot drift apart. Everything runs in subprocesses that import the copy's package, not the checkout's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "contributing.md"

pytestmark = pytest.mark.slow  # copies the repository and starts a few Pythons and a pytest


def walkthrough_blocks() -> list[str]:
    """The walk-through's Python blocks, in order: the recipe entry, the model, the manifest entry."""
    section = PAGE.read_text().split("## Adding a model and a notebook 10")[1].split("\n## ")[0]
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)\n\s*```", section, re.DOTALL)]


def insert_before_end(path: Path, start: str, end: str, text: str) -> None:
    """Put `text` on its own line just before the first `end` after `start` (the end of a dict or a tuple)."""
    source = path.read_text()
    assert start in source, f"{path.name} has no {start!r}: update docs/contributing.md"
    at = source.index(end, source.index(start))
    path.write_text(source[:at] + "\n" + text + source[at:])


def run(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "MNIST_LESSON_SMOKE": "1"}
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600)


def test_the_walkthrough_adds_a_model_and_a_notebook_10(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    (copy / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", copy / ".ci" / "run")
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.lock")
    for name in ("mnist_lesson", "notebooks", "instructor", "tests", "benchmarks", "docs"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml", "conftest.py", "requirements.txt"):
        shutil.copy(REPO / name, copy / name)
    recipe, model, lesson = walkthrough_blocks()

    # Steps 1 and 2: the recipe entry and the registered model.
    insert_before_end(copy / "mnist_lesson" / "recipes.py", "RECIPES: dict[str, Recipe] = {", "\n}\n",
                      textwrap.indent(recipe, "    "))
    with (copy / "mnist_lesson" / "models.py").open("a") as models:
        models.write("\n\n" + model + "\n")
    listed = run(copy, "-m", "mnist_lesson", "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("nine ")]
    assert "4,220" in row and "onecycle" in row

    # Step 3: the notebook, not yet in the manifest: the check the tests run names it.
    shutil.copy(copy / "notebooks" / "08_parameter_ladder.ipynb", copy / "notebooks" / "10_nine.ipynb")
    before = run(copy, "-c", "from pathlib import Path; from mnist_lesson.course import check_series; "
                              "print(check_series(Path('.')))")
    assert before.returncode == 0, before.stderr
    assert "notebooks/10_nine.ipynb is not listed in mnist_lesson/course.py" in before.stdout

    # Steps 4 and 5: the manifest entry, then the README's table rendered from it.
    insert_before_end(copy / "mnist_lesson" / "course.py", "LESSONS: tuple[Lesson, ...] = (", "\n)\n",
                      textwrap.indent(lesson, "    "))
    rendered = run(copy, "benchmarks/readme_tables.py")
    assert rendered.returncode == 0, rendered.stderr
    assert "| `10_nine.ipynb` | a rung narrower than under5k |" in (copy / "README.md").read_text()

    # Step 6: the fast tests of the manifest, the recipes and the README pass with the new entries.
    after = run(copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-m", "not slow",
                "tests/test_course.py", "tests/test_recipes.py", "tests/test_readme.py")
    assert after.returncode == 0, after.stdout[-3000:]
