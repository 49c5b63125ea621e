"""The README and docs/: the two commands are the ones CI runs, figures come from results files, links resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_results_files() -> None:
    done = subprocess.run([sys.executable, "benchmarks/readme_tables.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_ci_runs_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n\s*```", readme, re.DOTALL)
    install, test = blocks[0].strip(), blocks[1].strip()
    assert install == "pip install -r requirements.txt && python -m mnist_lesson train final"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci, "CI must run the README's test command exactly"
    assert install.replace("&& python", "&& MNIST_LESSON_SMOKE=1 python") in ci


def test_requirements_never_pin_torch_exactly() -> None:
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    for name in ("torch", "torchvision"):
        (spec,) = [line for line in lines if re.match(rf"{name}\b(?!vision)", line)]
        assert ">=" in spec and "==" not in spec and "<" not in spec, spec
    assert any(line.startswith("-e .") for line in lines)


def test_the_readme_is_a_front_door_of_at_most_250_lines() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"


def test_the_exercise_table_and_counts_match_the_exercises() -> None:
    from mnist_lesson.grading.exercises import EXERCISES

    page = (REPO / "docs" / "exercises.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", page, re.MULTILINE)
    assert rows == [(name, str(ex.max_points)) for name, ex in EXERCISES.items()]
    total = sum(ex.max_points for ex in EXERCISES.values())
    assert f"has {len(EXERCISES)} exercises worth {total} points" in " ".join(page.split())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"{len(EXERCISES)} exercises in all" in readme
