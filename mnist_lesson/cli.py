"""Command line: `python -m mnist_lesson data | train NAME | summary NAME | colab | list`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mnist_lesson.data import DataError, ensure_mnist
from mnist_lesson.models import MODELS, count_parameters, get_model, get_recipe
from mnist_lesson.results import BUDGET


def _data(args: argparse.Namespace) -> int:
    report = ensure_mnist(args.root)
    print(report.describe())
    return 0


def new_run_folder(out: Path, prefix: str) -> Path:
    """Create and return a new, empty run folder out/PREFIX-DATE-TIME[-N]; never reuse an existing one."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        run = out / (stem if n == 1 else f"{stem}-{n}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise ValueError(f"could not create a new run folder in {out}")


def _train(args: argparse.Namespace) -> int:
    # Imported here so that the other commands skip matplotlib's start-up cost.
    from mnist_lesson.config import Speed
    from mnist_lesson.plots import plot_history
    from mnist_lesson.train import pick_device, save_checkpoint, smoke_mode, train_recipe

    start = time.perf_counter()

    recipe = get_recipe(args.model).with_overrides(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                                   data=args.data)
    device = pick_device(args.device)
    params = count_parameters(get_model(args.model))
    print(f"model {args.model}: {params:,} parameters")
    print(f"recipe: {recipe}")
    smoke = " (smoke mode: 1 epoch, a few batches)" if smoke_mode() else ""
    run = new_run_folder(Path(args.out), f"{args.model}-seed{args.seed}")  # before training: a bad --out fails now
    speed = Speed(amp=args.amp, compile=args.compile, eval_batch_size=args.eval_batch_size)
    print(f"training on {device} with seed {args.seed}{smoke}; {speed}", flush=True)
    model, history = train_recipe(lambda: get_model(args.model), recipe, device=device, seed=args.seed,
                                  root=args.root, progress=not args.no_progress, speed=speed)
    wall = time.perf_counter() - start
    history.meta["model"] = args.model
    save_checkpoint(model, run / "model.pt")
    history.save(run / "history.json")
    fig = plot_history(history, title=f"{args.model} ({params:,} parameters)")
    fig.savefig(run / "curves.png", dpi=100)
    last = history.epochs[-1]
    print(f"final test accuracy {last.test_acc:.2f}% after {last.epoch} epoch(s)")
    print(f"wall time {wall:.1f} s on {history.meta['device']}, data loading included "
          f"({sum(history.column('seconds')):.1f} s in the epochs)")
    print(f"saved model.pt, history.json and curves.png in {run}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from mnist_lesson.budget import summary_text

    print(f"model {args.model}")
    print(summary_text(get_model(args.model), limit=args.limit))
    return 0


def _colab(args: argparse.Namespace) -> int:
    from mnist_lesson.colab import REPOSITORY, check_notebook, sync_notebook

    paths = sorted(Path(args.folder).glob("*.ipynb"))
    if not paths:
        print(f"error: no notebooks in {args.folder}", file=sys.stderr)
        return 2
    if args.sync:
        for path in paths:
            print(f"{path.name}: {'updated' if sync_notebook(path) else 'already in sync'}")
        return 0
    problems = [problem for path in paths for problem in check_notebook(path)]
    print("\n".join(problems) or f"{len(paths)} notebooks point at {REPOSITORY}")
    return 1 if problems else 0


def _student(args: argparse.Namespace) -> int:
    from mnist_lesson.exercises import write_student_version

    target = write_student_version(Path(args.source), Path(args.out))
    print(f"wrote {target}: solutions replaced by stubs, outputs cleared; run it once to store its outputs")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from mnist_lesson.grader import grade_folder

    if not Path(args.submissions).is_dir():
        print(f"error: {args.submissions} is not a folder of .ipynb submissions", file=sys.stderr)
        return 2
    grade_folder(Path(args.submissions), Path(args.out), timeout=args.timeout, redo=args.redo)
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in MODELS:
        print(f"{name:12s} {count_parameters(get_model(name)):>8,} parameters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m mnist_lesson`."""
    parser = argparse.ArgumentParser(prog="python -m mnist_lesson", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="fetch and verify MNIST, print where it is")
    data.add_argument("--root", help="data folder (default: $MNIST_LESSON_DATA or a per-user cache)")
    data.set_defaults(run=_data)

    train = commands.add_parser("train", help="train a registered model with its recipe")
    train.add_argument("model", choices=sorted(MODELS), help="registered model name")
    train.add_argument("--epochs", type=int, help="number of epochs (default: the model's recipe)")
    train.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's)")
    train.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    train.add_argument("--data", choices=["memory", "dataloader"], help="data path (default: the recipe's)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    train.add_argument("--root", help="data folder (default: $MNIST_LESSON_DATA or a per-user cache)")
    train.add_argument("--out", default="runs", help="folder for run folders (default ./runs)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    train.add_argument("--amp", action="store_true",
                       help="bfloat16 mixed precision (native bfloat16 only: recent GPUs, CPUs with AVX512-BF16, AMX)")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the model (seconds to a minute of compiling first)")
    train.add_argument("--eval-batch-size", type=int,
                       help="test-set batch size (default: 10,000 on a GPU, the recipe's elsewhere)")
    train.set_defaults(run=_train)

    summary = commands.add_parser("summary", help="print a registered model's layer table and parameter report")
    summary.add_argument("model", choices=sorted(MODELS), help="registered model name")
    summary.add_argument("--limit", type=int, default=BUDGET, help=f"parameter budget to check (default {BUDGET})")
    summary.set_defaults(run=_summary)

    colab = commands.add_parser("colab", help="check (or --sync) every notebook's Colab badge and setup cell")
    colab.add_argument("--sync", action="store_true", help="rewrite them from mnist_lesson/colab.py")
    colab.add_argument("--folder", default="notebooks", help="notebook folder (default ./notebooks)")
    colab.set_defaults(run=_colab)

    student = commands.add_parser("student", help="write the student version of the exercise notebook")
    student.add_argument("--source", default="notebooks/exercises.ipynb", help="notebook with solutions")
    student.add_argument("--out", default="notebooks/student/exercises.ipynb", help="where the student version goes")
    student.set_defaults(run=_student)

    grade = commands.add_parser("grade", help="grade a folder of submitted exercise notebooks into a CSV gradebook")
    grade.add_argument("submissions", help="folder with one .ipynb per student (the file's stem names the student)")
    grade.add_argument("--out", default="grades.csv", help="gradebook CSV, appended to as students are graded")
    grade.add_argument("--timeout", type=float, default=120, help="seconds each notebook may run (default 120)")
    grade.add_argument("--redo", action="store_true", help="grade again students already in the gradebook")
    grade.set_defaults(run=_grade)

    listing = commands.add_parser("list", help="list registered models and their parameter counts")
    listing.set_defaults(run=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "epochs", None) is not None and args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
