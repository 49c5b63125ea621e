"""The notebook series as files: Colab links, stored outputs from one full run, nothing re-typed, prose honest.

nbval (run by `pytest` on notebooks/) re-executes them; these tests check what nbval cannot see.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mnist_lesson.colab import check_notebook
from mnist_lesson.models import MODELS, get_model, get_recipe

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [path.name for path in NOTEBOOKS]


def code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_series_is_complete() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(9)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_badge_and_setup_cell_match_the_one_repository_address(path: Path) -> None:
    assert check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_come_from_one_run_top_to_bottom(path: Path) -> None:
    cells = code_cells(path)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), \
        "every code cell must have been run once, in order, in one kernel"
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    device_cell = cells[1]
    assert "The device this notebook's stored outputs were produced on" in device_cell.source
    assert re.search(r"running on \w+", output_text(device_cell))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_training_logs_are_full_runs_not_smoke_runs(path: Path) -> None:
    for cell in code_cells(path):
        for name in re.findall(r'train_recipe\(MODELS\["(\w+)"\]', cell.source):
            epochs = get_recipe(name).epochs
            assert f"epoch {epochs:2d}/{epochs}: train loss" in output_text(cell), f"{name} in {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_import_models_and_loops_instead_of_retyping_them(path: Path) -> None:
    source = "\n".join(cell.source for cell in code_cells(path))
    for pattern in (r"class \w+\(.*Module\)", r"def \w+\(", r"nn\.(Conv2d|Linear|BatchNorm2d)\(", r"\.backward\(",
                    r"optim\.\w+\(", r"sys\.path"):
        assert not re.search(pattern, source), f"{path.name} defines {pattern!r} itself; import it from mnist_lesson"


def test_every_step_model_is_taught_in_a_notebook() -> None:
    source = "\n".join(cell.source for path in NOTEBOOKS for cell in code_cells(path))
    taught = set(re.findall(r'(?:MODELS\[|get_model\()"(\w+)"', source))
    assert set(MODELS) - {"seed"} <= taught


# Numbers prose may use: the course's specification (target, budget, epochs, seeds, the ladder's limits),
# kernel and image sizes, notebook numbers, and the final model's widths (checked below). Anything else must
# come from a cell.
ALLOWED_NUMBERS = {"99.40", "99.4", "20,000", "28x28", "3x3", "1x1", "2x2", "4x4", "3", "5", "15", "0-4",
                   "01", "02", "03", "04", "05", "06", "07", "08", "00", "02-07", "0", "1", "2", "16", "24", "32",
                   "8,000", "5,000", "3,762", "10", "64"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_markdown_has_no_number_that_no_cell_computes(path: Path) -> None:
    cells = nbformat.read(path, as_version=4).cells
    prose = "\n".join(cell.source for cell in cells if cell.cell_type == "markdown")
    prose = re.sub(r"\(https?://[^)]*\)|`[^`]*`", "", prose)  # links and code spans are not claims
    numbers = set(re.findall(r"\d[\d,.\-x]*\d|\d", prose))
    assert numbers <= ALLOWED_NUMBERS, f"unexplained numbers in {path.name}: {sorted(numbers - ALLOWED_NUMBERS)}"


def test_numbers_the_prose_states_are_true() -> None:
    final, recipe = get_model("final"), get_recipe("final")
    assert final.head[1][0].out_channels == 32  # "a 32-wide 1x1 layer" after the average pool
    assert final.block3[-1][0].out_channels == 24  # "24 features instead of 16"
    assert get_model("gap").block3[-1][0].out_channels == 16
    assert recipe.epochs == 15 and recipe.schedule == "onecycle" and recipe.nesterov
    assert recipe.rotate_degrees > 0 and recipe.translate > 0
    # Notebook 08: the ladder's recipe is the final one with "batches of 32 instead of 64".
    from mnist_lesson.models import LADDER, LADDER_RECIPE

    assert recipe.batch_size == 64 and LADDER_RECIPE == recipe.with_overrides(batch_size=32)
    assert all(get_recipe(name) == LADDER_RECIPE for name in LADDER)
