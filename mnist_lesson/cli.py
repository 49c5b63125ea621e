"""Command line: `python -m mnist_lesson train NAME | list | summary NAME | data | colab | student | grade`.

Arguments are checked where they are parsed; a usage error (a bad argument, a missing file, an
unusable folder) prints one line and exits with status 2. A bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from mnist_lesson.budget import count_parameters, parameter_report
from mnist_lesson.config import (
    BUDGET,
    LAST_EPOCHS,
    MAX_EPOCHS,
    SMOKE_LIMITS,
    TARGET,
    Recipe,
    Speed,
    UsageError,
    smoke_mode,
)
from mnist_lesson.data import DataError, check_root, ensure_mnist
from mnist_lesson.device import describe_device, pick_device, set_cpu_threads
from mnist_lesson.models import LADDER, MODELS, get_model
from mnist_lesson.receptive_field import layer_table
from mnist_lesson.recipes import get_recipe

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


# --- argument types: each turns a bad value into one line saying what is expected ----------------------


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number greater than 0 (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number greater than 0, got {text!r}")
    return value


def model_name(text: str) -> str:
    """Parse the name of a registered model."""
    if text not in MODELS:
        raise argparse.ArgumentTypeError(f"no model named {text!r}; registered models: {', '.join(MODELS)}")
    return text


def root_folder(text: str) -> Path:
    """Parse a data folder that can hold MNIST."""
    try:
        return check_root(Path(text).expanduser())
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def existing_file(text: str) -> Path:
    """Parse the path of an existing file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file" if path.exists() else f"{text} does not exist")
    return path


def new_run_folder(out: Path, prefix: str) -> Path:
    """Create and return a new, empty run folder out/PREFIX-DATE-TIME[-N]; never reuse an existing one."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in range(1, 1000):
            run = out / (stem if n == 1 else f"{stem}-{n}")
            try:
                run.mkdir()
                return run
            except FileExistsError:
                continue
    except OSError as exc:
        raise UsageError(f"cannot create a run folder in {out}: {exc.strerror or exc}; choose another --out") from None
    raise UsageError(f"could not create a new run folder in {out}; choose another --out")


# --- commands -------------------------------------------------------------------------------------------


def _data(args: argparse.Namespace) -> int:
    print(ensure_mnist(args.root).describe())
    return 0


def verdict(name: str, params: int, test_accs: Sequence[float], epochs_planned: int, smoke: bool) -> str:
    """Return the closing line of `train`: whether the parameter budget and the accuracy target are met."""
    from mnist_lesson.records import claim_holds

    limit = LADDER.get(name, BUDGET)
    under = params < limit
    budget = f"{params:,} parameters {'<' if under else '>='} {limit:,} (budget {'met' if under else 'NOT met'})"
    if smoke:
        return f"verdict: {budget}; accuracy not judged (smoke run of {len(test_accs)} short epoch)"
    last = ", ".join(f"{a:.2f}" for a in test_accs[-LAST_EPOCHS:])
    every = len(test_accs) >= LAST_EPOCHS and min(test_accs[-LAST_EPOCHS:]) >= TARGET
    too_long = f"; the claim allows at most {MAX_EPOCHS} epochs" if len(test_accs) > MAX_EPOCHS else ""
    holds = claim_holds(test_accs)
    return (f"verdict: {budget}; last {LAST_EPOCHS} of {epochs_planned} epochs {last}: "
            f"{'every one' if every else 'NOT every one'} >= {TARGET:.2f}%{too_long} "
            f"(target {'met' if holds else 'NOT met'})")


def _train(args: argparse.Namespace) -> int:
    # Imported here so that the other commands skip torchvision's and matplotlib's start-up cost.
    from mnist_lesson.plots import plot_history
    from mnist_lesson.runs import TrainingStopped, save_checkpoint, train_recipe

    start = time.perf_counter()
    smoke = smoke_mode()
    recipe = get_recipe(args.model).with_overrides(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    speed = Speed(data=args.data, amp=args.amp, compile=args.compile, graph=args.graph, autotune=args.autotune,
                  eval_batch_size=args.eval_batch_size)
    device = pick_device(args.device)
    set_cpu_threads(args.threads)
    params = count_parameters(get_model(args.model))
    run = new_run_folder(args.out, f"{args.model}-s{args.seed}")  # before training: a bad --out fails now
    print(f"model {args.model}: {params:,} parameters")
    print(f"recipe: {recipe.describe()}")
    print(f"training on {describe_device(device)} with seed {args.seed}"
          f"{f', smoke mode: {SMOKE_LIMITS.epochs} epoch of {SMOKE_LIMITS.train_batches} batches' if smoke else ''}"
          f"; {speed}", flush=True)
    try:
        model, history = train_recipe(args.model, recipe, device=device, seed=args.seed, validation=args.validation,
                                      root=args.root, speed=speed, progress=not args.no_progress, smoke=smoke)
    except TrainingStopped as stop:
        save_checkpoint(stop.model, run / "model.pt")
        stop.history.save(run / "history.json")
        print(f"\nstopped: {stop.reason}; the finished epochs are in {run / 'history.json'}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stop.__cause__, KeyboardInterrupt) else 1
    except BaseException:
        if not any(run.iterdir()):  # a run that never started (no data, say) leaves no empty folder behind
            run.rmdir()
        raise
    wall = time.perf_counter() - start
    save_checkpoint(model, run / "model.pt")
    history.save(run / "history.json")
    plot_history(history, title=f"{args.model} ({params:,} parameters)").savefig(run / "curves.png", dpi=100)
    print(f"wall time {wall:.1f} s on {history.meta['device']}, data loading included "
          f"({sum(history.column('seconds')):.1f} s in the epochs)")
    print(f"saved model.pt, history.json and curves.png in {run}")
    print(verdict(args.model, params, history.column("test_acc"), history.meta["epochs_planned"], smoke))
    return 0


def summary_text(name: str, limit: int) -> str:
    """Return a registered model's layer table and its parameter report (`python -m mnist_lesson summary`)."""
    model = get_model(name)
    return f"model {name}\n{layer_table(model).to_text()}\n\n{parameter_report(model, limit)}"


def _summary(args: argparse.Namespace) -> int:
    print(summary_text(args.model, args.limit))
    return 0


def _colab(args: argparse.Namespace) -> int:
    from mnist_lesson.colab import REPOSITORY, check_notebook, describe_links, sync_notebook

    paths = sorted(p for p in Path(args.folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not paths:
        raise UsageError(f"no notebooks in {args.folder}")
    if args.sync:
        for path in paths:
            print(f"{path.name}: {'updated' if sync_notebook(path) else 'already in sync'}")
        return 0
    if args.check:
        print("\n".join(describe_links(paths)))
    problems = [problem for path in paths for problem in check_notebook(path)]
    print("\n".join(problems) or f"{len(paths)} notebooks point at {REPOSITORY}")
    return 1 if problems else 0


def _student(args: argparse.Namespace) -> int:
    from mnist_lesson.grading.student_notebook import write_student_version

    target = write_student_version(args.source, Path(args.out))
    print(f"wrote {target}: solutions removed, outputs cleared, Colab badge and cells added; store its outputs with "
          f"`python benchmarks/run_notebooks.py {target}`")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from mnist_lesson.grading.grader import EnvironmentChanged, GradingLimits, grade_folder

    try:
        summary = grade_folder(args.submissions, args.out, GradingLimits(timeout=args.timeout), jobs=args.jobs,
                               redo=args.redo, wide=args.wide, feedback=args.feedback, bom=args.bom,
                               lms_export=args.lms, roster=args.roster, assignment=args.assignment,
                               isolation=args.isolation, memory=round(args.memory * 2**30))
    except EnvironmentChanged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if summary.failed else 0  # Ctrl-C: KeyboardInterrupt, status 130, after saying how to resume


def output_path(text: str) -> Path:
    """Parse a file or folder to write into a folder that exists (checked before any grading)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist; create it or choose another")
    return path


def submissions_folder(text: str) -> Path:
    """Parse the path of an existing folder of submissions."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder of .ipynb submissions")
    return path


def recipe_cells(recipe: Recipe) -> list[str]:
    """Return a recipe as cells of `list`: epochs, batch size, schedule, peak learning rate, augmentation, average."""
    augment = ", ".join(f"{f.name} {getattr(recipe.augment, f.name):g}" for f in fields(recipe.augment)
                        if getattr(recipe.augment, f.name))
    average = f"decay {recipe.ema:g}" if recipe.ema else "none"
    return [str(recipe.epochs), str(recipe.batch_size), recipe.schedule, f"{recipe.lr:g}", augment or "none", average]


def list_table() -> str:
    """Return the table of `python -m mnist_lesson list`: every registered model, its parameters and its recipe."""
    header = ["model", "parameters", "epochs", "batch", "schedule", "peak lr", "augmentation", "weight average"]
    rows = [header, *([name, f"{count_parameters(get_model(name)):,}", *recipe_cells(get_recipe(name))]
                      for name in MODELS)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numbers = {1, 2, 3, 5}  # right-aligned columns
    return "\n".join("  ".join(cell.rjust(width) if i in numbers else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in rows)


def _list(args: argparse.Namespace) -> int:
    print(list_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m mnist_lesson`."""
    parser = argparse.ArgumentParser(prog="python -m mnist_lesson", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    root_help = "data folder (default: $MNIST_LESSON_DATA or a per-user cache)"

    data = commands.add_parser("data", help="fetch and verify MNIST, print where it is")
    data.add_argument("--root", type=root_folder, help=root_help)
    data.set_defaults(run=_data)

    train = commands.add_parser("train", help="train a registered model with its recipe")
    train.add_argument("model", type=model_name, help=f"registered model: {', '.join(MODELS)}")
    train.add_argument("--epochs", type=positive_int, help="number of epochs (default: the model's recipe)")
    train.add_argument("--batch-size", type=positive_int, help="training batch size (default: the recipe's)")
    train.add_argument("--lr", type=positive_float, help="learning rate (default: the recipe's)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--validation", action="store_true",
                       help="hold out the last 10,000 training images and report accuracy on them too")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    train.add_argument("--threads", type=positive_int,
                       help="CPU threads (default: every core, or one when the CPU is already busy)")
    train.add_argument("--root", type=root_folder, help=root_help)
    train.add_argument("--out", type=Path, default=Path("runs"), help="folder for run folders (default ./runs)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    train.add_argument("--data", choices=["memory", "dataloader"], default="memory",
                       help="data path: the whole set on the device (default) or torchvision's DataLoader")
    train.add_argument("--amp", action="store_true",
                       help="bfloat16 mixed precision (native bfloat16 only: recent GPUs, CPUs with AVX512-BF16, AMX)")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the model (seconds to a minute of compiling first)")
    train.add_argument("--graph", action="store_true",
                       help="replay each training step from a CUDA graph (CUDA only; recipes without a weight average)")
    train.add_argument("--no-autotune", dest="autotune", action="store_false",
                       help="on a GPU, let cuDNN's heuristics pick convolution algorithms instead of timing them")
    train.add_argument("--eval-batch-size", type=positive_int,
                       help="test-set batch size (default: 10,000 on a GPU, 1,000 elsewhere)")
    train.set_defaults(run=_train)

    summary = commands.add_parser("summary", help="print a registered model's layer table and parameter report")
    summary.add_argument("model", type=model_name, help="registered model name")
    summary.add_argument("--limit", type=positive_int, default=BUDGET,
                         help=f"parameter budget to check (default {BUDGET})")
    summary.set_defaults(run=_summary)

    colab = commands.add_parser("colab", help="check (or --sync) every notebook's Colab badge and first cells")
    colab.add_argument("--check", action="store_true", help="also list every badge and install address")
    colab.add_argument("--sync", action="store_true", help="rewrite them from mnist_lesson/colab.py")
    colab.add_argument("--folder", default="notebooks", help="notebook folder (default ./notebooks)")
    colab.set_defaults(run=_colab)

    student = commands.add_parser("student", help="write the student version of the exercise notebook")
    student.add_argument("--source", type=existing_file, default="instructor/exercises.ipynb",
                         help="the instructor's notebook with solutions (default instructor/exercises.ipynb)")
    student.add_argument("--out", default="notebooks/exercises.ipynb",
                         help="where the student version goes (default notebooks/exercises.ipynb)")
    student.set_defaults(run=_student)

    grade = commands.add_parser("grade", help="grade a folder of submitted exercise notebooks into a CSV gradebook")
    grade.add_argument("submissions", type=submissions_folder,
                       help="folder with one .ipynb per student (the file's stem names the student)")
    grade.add_argument("--out", type=output_path, default=Path("grades.csv"),
                       help="gradebook CSV, one row per student and exercise (default grades.csv)")
    grade.add_argument("--wide", type=output_path,
                       help="wide CSV for a gradebook import, one row per student (default OUT-wide.csv)")
    grade.add_argument("--feedback", type=output_path,
                       help="folder for one markdown feedback file per student (default OUT-feedback/)")
    grade.add_argument("--timeout", type=positive_float, default=120,
                       help="wall seconds each notebook may run, all its cells together (default 120)")
    grade.add_argument("--jobs", type=positive_int, default=1, help="notebooks graded at once (default 1)")
    grade.add_argument("--isolation", choices=["auto", "namespaces", "none"], default="auto",
                       help="where student kernels run: their own Linux namespaces, hiding the gradebook, submissions "
                            "and solutions (auto: where the system allows, else a loud warning and none), or only "
                            "under resource limits (none); see docs/grading.md")
    grade.add_argument("--memory", type=float, default=2.0,
                       help="memory limit of each kernel in GiB (RLIMIT_DATA; 0: none; default 2)")
    grade.add_argument("--redo", action="store_true", help="grade again students already in the gradebook")
    grade.add_argument("--bom", action="store_true", help="start the CSVs with a UTF-8 byte-order mark, so that "
                       "Excel on Windows shows names such as José right")
    grade.add_argument("--lms", choices=["canvas", "moodle"], help="also write OUT-STEM-LMS.csv, that system's grade "
                       "import: one assignment column of totals, identity columns from --roster")
    grade.add_argument("--roster", type=existing_file, help="CSV of students: `student` (their key) and any of name, "
                       "id, sis_user_id, login, section, email; maps LMS download file names to keys")
    grade.add_argument("--assignment", default="MNIST exercises", help="the LMS assignment column's name")
    grade.set_defaults(run=_grade)

    listing = commands.add_parser("list", help="list registered models, their parameter counts and their recipes")
    listing.set_defaults(run=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad argument exits here with status 2 and one line
    try:
        return args.run(args)
    except (UsageError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

