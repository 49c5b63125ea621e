"""The one description of the course: which notebook teaches what, with which models, studies and evidence.

Everything that lists the notebooks reads it: the README's notebook table (`notebooks_table`), the runner
that stores their outputs (`benchmarks/run_notebooks.py`), the Colab test and the notebook tests. Adding a
notebook means adding one `Lesson` here, the notebook itself and (usually) its model; `check_series` says
which of the three is missing. Introduced in docs/contributing.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Lesson:
    """One notebook of the series: its file, the idea it adds, what it draws, and what it trains and shows."""

    notebook: str  # file name in notebooks/, "NN_name.ipynb"
    idea: str  # the idea it adds, as the README's table states it
    pictures: str  # what it draws
    models: tuple[str, ...] = ()  # registered models it trains or shows (`python -m mnist_lesson train NAME`)
    studies: tuple[str, ...] = ()  # design studies (mnist_lesson.studies.STUDIES) whose results it renders
    evidence: tuple[str, ...] = ()  # recorded files under mnist_lesson/evidence/ it shows

    @property
    def number(self) -> str:
        """The notebook's two-digit number, e.g. "07"."""
        return self.notebook[:2]


LESSONS: tuple[Lesson, ...] = (
    Lesson("00_setup_and_data.ipynb",
           "the data: pixel statistics, the Dataset and the fast path, augmentation, the validation split, and the "
           "training loop line by line",
           "a grid of digits, the same digits augmented",
           evidence=("seeds_final.json", "speed_levers_cpu.json")),
    Lesson("01_first_network.ipynb",
           "a first working network, deliberately large, and where its parameters sit; why the running training "
           "accuracy sits below the others",
           "parameters per layer against the budget",
           models=("first",), evidence=("steps/first.json",)),
    Lesson("02_receptive_field.ipynb",
           "a skeleton designed from the receptive field; the noise every comparison is measured against",
           "RF per layer, the RF of the centre unit drawn on a digit block by block, the effective receptive field "
           "of the trained network, feature maps of one digit",
           models=("skeleton",), studies=("steps",), evidence=("steps/skeleton.json", "design_runs.jsonl")),
    Lesson("03_transitions.ipynb",
           "1x1 transitions: fewer parameters, same receptive field; why the first epoch is slow",
           "the RF on a digit, unchanged",
           models=("transitions",), studies=("steps",), evidence=("steps/transitions.json", "design_runs.jsonl")),
    Lesson("04_batch_norm.ipynb",
           "batch normalization, inside the network and in its accuracy",
           "activation statistics over training, without and with BN",
           models=("batchnorm",), studies=("steps",), evidence=("steps/batchnorm.json", "design_runs.jsonl")),
    Lesson("05_dropout.ipynb",
           "dropout, measured on the validation split and with training accuracy in eval mode",
           "the train/validation gap measured two ways",
           models=("dropout",), studies=("steps",), evidence=("steps/dropout.json", "design_runs.jsonl")),
    Lesson("06_global_average_pooling.ipynb",
           "global average pooling instead of the big last layer; a cell to play with every knob",
           "the explorer: layer table, parameter count and RF on a digit for any knobs (sliders in Jupyter and "
           "Colab)",
           models=("gap",), studies=("steps",), evidence=("steps/gap.json", "design_runs.jsonl")),
    Lesson("07_final_model.ipynb",
           "the ablation from notebook 06 to the final model, one change at a time over 3 seeds; the multi-seed "
           "claim; what it still gets wrong",
           "the ablation over seeds, the schedule (learning rate and momentum per step, as recorded), misclassified "
           "digits, the confusion matrix and per-class accuracy, all steps against their size",
           models=("final",), studies=("ablation",),
           evidence=("steps/final.json", "seeds_final.json", "design_runs.jsonl")),
    Lesson("08_parameter_ladder.ipynb",
           "beyond the assignment: depthwise-separable convolutions, and a ladder of rungs under 8,000 and 5,000 "
           "parameters and the stretch under 3,762, each judged on several seeds, against the public results; then "
           "three smaller sizes of the stretch rung's layout, each on the validation split and on test seeds",
           "parameters per layer of the smallest rung, its RF on a digit, the ladder and the smaller sizes against "
           "the public results",
           models=("under8k", "under5k", "under3762", "under3000", "under2500", "under2100"),
           studies=("ladder5k", "ladder8k", "ladder3762", "smaller"),
           evidence=("seeds_final.json", "seeds_under8k.json", "seeds_under5k.json", "seeds_under3762.json",
                     "seeds_under3000.json", "seeds_under2500.json", "seeds_under2100.json", "design_runs.jsonl")),
    Lesson("09_appendix_evidence.ipynb",
           "appendix, not a lesson (the lessons do not need it): the provenance behind notebook 08's ladder: the "
           "lever studies on the validation split, every seed file by when and where it ran, the first trials "
           "(judged on the test set), and how the recipes came to be",
           "none: tables only",
           studies=("ladder5k", "ladder8k", "ladder3762"),
           evidence=("seeds_under8k.json", "seeds_under5k.json", "seeds_under3762.json",
                     "seeds_under8k_ladder_recipe.json", "seeds_under5k_ladder_recipe.json",
                     "seeds_under3762_ladder_recipe.json", "seeds_under3000.json", "seeds_under2500.json",
                     "seeds_under2100.json",
                     "legacy/ladder_trials_test_judged.jsonl", "design_runs.jsonl")),
)

# The exercises, in the student's version (generated) and the instructor's source (with solutions), run after
# the lessons; paths relative to the repository.
EXERCISE_NOTEBOOKS: tuple[str, ...] = ("notebooks/exercises.ipynb", "instructor/exercises.ipynb")

_NUMBERED = re.compile(r"\d\d_\w+\.ipynb")


def lesson(number: str) -> Lesson:
    """Return the lesson with this two-digit number, e.g. lesson("07")."""
    for entry in LESSONS:
        if entry.number == number:
            return entry
    raise KeyError(f"no notebook {number!r} in the course; the notebooks are {[e.number for e in LESSONS]}")


def notebook_paths(repo: Path, exercises: bool = True) -> list[Path]:
    """Return every notebook of the course under `repo`, in the order they are run: lessons, then exercises."""
    paths = [Path(repo) / "notebooks" / entry.notebook for entry in LESSONS]
    return paths + ([Path(repo) / name for name in EXERCISE_NOTEBOOKS] if exercises else [])


def check_series(repo: Path) -> list[str]:
    """Return what disagrees between the manifest and the notebooks on disk (an empty list when nothing does)."""
    repo = Path(repo)
    problems = []
    listed = [entry.notebook for entry in LESSONS]
    on_disk = sorted(p.name for p in (repo / "notebooks").glob("*.ipynb") if _NUMBERED.fullmatch(p.name))
    for name in listed:
        if not _NUMBERED.fullmatch(name):
            problems.append(f"{name}: a lesson's file name must be NN_name.ipynb")
        elif name not in on_disk:
            problems.append(f"{name} is listed in mnist_lesson/course.py but notebooks/{name} does not exist: "
                            "add the notebook or remove its Lesson")
    for name in on_disk:
        if name not in listed:
            problems.append(f"notebooks/{name} is not listed in mnist_lesson/course.py: add a Lesson for it "
                            "(or remove the file)")
    numbers = [entry.number for entry in LESSONS]
    if numbers != [f"{i:02d}" for i in range(len(numbers))]:
        problems.append(f"the lessons must be numbered 00, 01, ... in order without gaps; they are {numbers}")
    for name in EXERCISE_NOTEBOOKS:
        if not (repo / name).is_file():
            problems.append(f"{name} is listed in mnist_lesson/course.py but does not exist")
    return problems


def notebooks_table() -> str:
    """Return the README's markdown table of the notebooks: file, idea, pictures and models."""
    rows = ["| notebook | the idea it adds | pictures | model (`python -m mnist_lesson train NAME`) |",
            "|---|---|---|---|"]
    for entry in LESSONS:
        models = ", ".join(f"`{name}`" for name in entry.models) or "none"
        rows.append(f"| `{entry.notebook}` | {entry.idea} | {entry.pictures} | {models} |")
    return "\n".join(rows)
