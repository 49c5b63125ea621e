"""The notebook series as files: Colab cells, stored outputs from one full run, nothing re-typed, prose honest.

nbval (run by `pytest` on notebooks/) re-executes them; these tests check what nbval cannot see.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from torch import nn

from mnist_lesson import config
from mnist_lesson.colab import check_notebook
from mnist_lesson.course import LESSONS, notebook_paths
from mnist_lesson.models import LADDER, MODELS, SMALLER_SIZES, get_model
from mnist_lesson.recipes import RECIPES, get_recipe

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = notebook_paths(REPO, exercises=False)  # the lessons, from the course's manifest
IDS = [path.name for path in NOTEBOOKS]


def code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


ALL_NOTEBOOKS = [path for path in notebook_paths(REPO) if path.is_relative_to(REPO / "notebooks")]


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
        # Runs with the model's registered recipe; a call that passes its own recipe (03's one-epoch look at the
        # first epoch) trains what that recipe says.
        for name in re.findall(r'train_recipe\("(\w+)", device=', cell.source):
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


def specification_numbers() -> set[str]:
    """The numbers markdown may state, each read from where the course defines it: its specification (target,
    budget, epochs judged, the claim's seeds and their halves, the unseen seeds, the split sizes, the limits of the
    ladder and of the smaller sizes), the registered recipes' epochs and batch sizes, the notebooks' own numbers, and
    the classes. A measured figure is never among them: it belongs in a cell that renders it from the records."""
    train_images = 60_000  # MNIST's training set (test_numbers_the_prose_states_are_true loads it)
    seeds = config.CLAIM_SEEDS
    half = len(seeds) // 2
    numbers = {f"{config.TARGET:.2f}", f"{config.TARGET:g}", f"{config.BUDGET:,}", str(config.LAST_EPOCHS),
               str(config.MAX_EPOCHS), str(len(seeds)), f"{seeds[0]}-{seeds[half - 1]}", f"{seeds[half]}-{seeds[-1]}",
               f"{seeds[0]}-{seeds[-1]}", f"{config.UNSEEN_SEEDS[0]}-{config.UNSEEN_SEEDS[-1]}",
               f"{config.VALIDATION_IMAGES:,}", f"{train_images:,}", f"{train_images - config.VALIDATION_IMAGES:,}",
               "10"}  # the classes
    numbers |= {f"{limit:,}" for limit in [*LADDER.values(), *SMALLER_SIZES.values()]}
    numbers |= {str(value) for recipe in RECIPES.values() for value in (recipe.epochs, recipe.batch_size)}
    lessons = [entry.number for entry in LESSONS]
    numbers |= set(lessons) | {f"{a}-{b}" for a in lessons for b in lessons if a < b}
    return numbers


SHAPES = re.compile(r"^\d+x\d+$")  # kernel and image sizes (3x3, 28x28): names of things, not measurements
CITED_YEAR = re.compile(r"\b(19|20)\d\d\b")


def stated_numbers(markdown: str) -> set[str]:
    """The numbers a markdown text states as prose: not in links, code spans, names (bfloat16) or cited years,
    and not single digits (counts such as "3 seeds" or "2 threads"; no measured figure of the course has one)."""
    prose = re.sub(r"\(https?://[^)]*\)|`[^`]*`", "", markdown)  # links and code spans are not claims
    prose = re.sub(r"\b[A-Za-z_]+\d\w*", "", CITED_YEAR.sub("", prose))
    return {n for n in re.findall(r"\d[\d,.\-x]*\d|\d", prose) if len(n) > 1 and not SHAPES.match(n)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_markdown_has_no_number_that_no_cell_computes(path: Path) -> None:
    cells = nbformat.read(path, as_version=4).cells
    numbers = stated_numbers("\n".join(cell.source for cell in cells if cell.cell_type == "markdown"))
    unexplained = numbers - specification_numbers()
    assert not unexplained, (f"{path.name} states {sorted(unexplained)} in markdown: render measured figures with a "
                             "cell (IPython.display.Markdown) from the records instead")


def test_the_prose_check_catches_a_typed_figure_and_allows_a_new_notebook_number() -> None:
    allowed = specification_numbers()
    assert stated_numbers("The final model reached 99.53% on seed 3.") - allowed == {"99.53"}
    assert stated_numbers("Notebook 07 trains for 15 epochs in bfloat16 with 3x3 kernels.") <= allowed
    # A notebook that does not exist yet has no number to cite (as a range: "10" alone is also the classes).
    assert f"{LESSONS[0].number}-{len(LESSONS):02d}" not in allowed


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
    # shifts of up to 5% of the side instead of 10%; under8k changes the average alone; under3762 has under5k's.
    assert get_recipe("under5k").changes_from(LADDER_RECIPE) == ["ema=0.999", "augment.shift=0.05"]
    assert get_recipe("under8k").changes_from(LADDER_RECIPE) == ["ema=0.999"]
    assert get_recipe("under3762") == get_recipe("under5k") and set(LADDER) == {"under8k", "under5k", "under3762"}
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
