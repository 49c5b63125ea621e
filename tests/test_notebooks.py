"""The notebook series as files: Colab cells, stored outputs from one full run, nothing re-typed, prose honest.

nbval (run by `pytest` on notebooks/) re-executes them; these tests check what nbval cannot see.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from torch import nn

from mnist_lesson.colab import check_notebook
from mnist_lesson.models import MODELS, get_model
from mnist_lesson.recipes import get_recipe

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
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))]  # numbered without gaps


ALL_NOTEBOOKS = sorted(p for p in (REPO / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[str(p.relative_to(REPO / "notebooks")) for p in ALL_NOTEBOOKS])
def test_colab_badge_setup_and_device_cells_match_the_one_repository_address(path: Path) -> None:
    assert check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_come_from_one_run_top_to_bottom(path: Path) -> None:
    cells = code_cells(path)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), \
        "every code cell must have been run once, in order, in one kernel"
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    assert re.search(r"running on \w+", output_text(cells[1]))  # the device cell (checked against colab.py above)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_training_logs_are_full_runs_not_smoke_runs(path: Path) -> None:
    for cell in code_cells(path):
        for name in re.findall(r'train_recipe\("(\w+)"', cell.source):
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
    taught = set(re.findall(r'(?:MODELS\[|get_model\(|train_recipe\()"(\w+)"', source))
    assert set(MODELS) - {"assignment"} <= taught


# Numbers markdown may state: the course's specification (target, budget, epochs, seeds, the ladder's limits,
# the split sizes), kernel and image sizes, the receptive-field rule's arithmetic, notebook numbers and the
# recipes' facts (checked below), and the year of a cited paper. A measured figure belongs in a cell that
# renders it from the results.
ALLOWED_NUMBERS = {"99.40", "99.4", "20,000", "28x28", "3x3", "1x1", "2x2", "4x4", "3", "4", "5", "8", "15", "0-4",
                   "5-9", "01", "02", "03", "04", "05", "06", "07", "08", "00", "01-06", "02-06", "0", "1", "2",
                   "16", "24", "32", "8,000", "5,000", "3,762", "10", "64", "60,000", "50,000", "10,000"}
CITED_YEAR = re.compile(r"\b(19|20)\d\d\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_markdown_has_no_number_that_no_cell_computes(path: Path) -> None:
    cells = nbformat.read(path, as_version=4).cells
    prose = "\n".join(cell.source for cell in cells if cell.cell_type == "markdown")
    prose = re.sub(r"\(https?://[^)]*\)|`[^`]*`", "", prose)  # links and code spans are not claims
    prose = CITED_YEAR.sub("", prose)
    numbers = set(re.findall(r"\d[\d,.\-x]*\d|\d", prose))
    assert numbers <= ALLOWED_NUMBERS, f"unexplained numbers in {path.name}: {sorted(numbers - ALLOWED_NUMBERS)}"


def test_numbers_the_prose_states_are_true() -> None:
    from mnist_lesson.config import VALIDATION_IMAGES
    from mnist_lesson.loaders import load_split
    from mnist_lesson.models import LADDER, transition_block
    from mnist_lesson.recipes import LADDER_RECIPE

    final, recipe = get_model("final"), get_recipe("final")
    assert get_recipe("skeleton").epochs == 8  # notebook 07: "steps 01-06 trained ... for 8 epochs or fewer"
    assert recipe.epochs == 15 and recipe.schedule == "onecycle" and recipe.nesterov and recipe.augment.active
    assert VALIDATION_IMAGES == 10_000 and len(load_split(True)[1]) == 60_000  # "the last 10,000 of the 60,000"
    # Notebook 08: the ladder's recipe is the final one with "batches of 32 instead of 64"; the final model has
    # "two 1x1 squeezes (one before the max-pool, one after the second block)".
    assert recipe.batch_size == 64 and LADDER_RECIPE == recipe.with_overrides(batch_size=32)
    # under5k changes two things in it (notebook 08, the README): a moving average of the weights, and random
    # shifts of up to 5% of the side instead of 10%; under8k changes the average alone; under3762 nothing.
    assert get_recipe("under5k").changes_from(LADDER_RECIPE) == ["ema=0.999", "augment.shift=0.05"]
    assert get_recipe("under8k").changes_from(LADDER_RECIPE) == ["ema=0.999"]
    assert get_recipe("under3762") == LADDER_RECIPE and set(LADDER) == {"under8k", "under5k", "under3762"}
    assert LADDER_RECIPE.augment.shift == 0.1
    assert isinstance(final.trans1[0][0], nn.Conv2d) and final.trans1[0][0].kernel_size == (1, 1)
    assert isinstance(final.trans1[-1], nn.MaxPool2d)
    assert str(final.trans2) == str(transition_block(32, 8, pool=False))


def test_notebooks_compare_steps_with_recorded_multi_seed_studies() -> None:
    """Steps 03-07 state their effects from design studies (rendered by a cell), never from one run."""
    for path in NOTEBOOKS:
        if path.name[:2] in {"03", "04", "05", "06", "07"}:
            source = "\n".join(cell.source for cell in code_cells(path))
            assert "summarize_study(" in source and "compare(" in source, path.name
