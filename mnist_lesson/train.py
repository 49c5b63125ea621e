"""The training loop of the course: `fit` trains and evaluates, `evaluate` measures, `History` keeps the figures.

`fit` is short enough to read in one go, and notebook 00 prints and explains it line by line. What
would clutter it sits in small helpers with plain names: `RunningScore` keeps an epoch's loss and
accuracy sums on the device, `with_progress` draws the progress bar, and `Schedule` steps the
learning-rate schedule and records the rate and momentum every step used. `NonFiniteLoss` stops a run
whose loss is no longer a number; `predict` returns a model's classes for notebook 07.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnist_lesson.files import atomic_write

Batch = tuple[torch.Tensor, torch.Tensor]
LOG_EVERY = 25  # batches between progress-bar refreshes (each one waits for the device)
MAX_TRACE = 600  # at most this many recorded steps of the schedule are kept in a saved History


def fit(model: nn.Module, train_batches: Iterable[Batch], eval_sets: Mapping[str, Iterable[Batch]],
        optimizer: torch.optim.Optimizer, schedule: Schedule, *, epochs: int, device: torch.device,
        progress: bool = True, history: History | None = None) -> History:
    """Train `model` for `epochs` epochs, evaluating it on every set of `eval_sets` after each; return the History.

    Pass your own `history` to keep the finished epochs when training stops early (Ctrl-C, a diverging loss).
    """
    history = History() if history is None else history
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()  # dropout on; batch normalization uses each batch's own statistics
        score = RunningScore(device)
        for x, y in with_progress(train_batches, f"epoch {epoch}/{epochs}", score, progress):
            x, y = x.to(device), y.to(device)
            output = model(x)  # log-probabilities: one row of 10 per image
            loss = F.nll_loss(output, y)  # mean of -log(probability given to the true digit)
            optimizer.zero_grad()  # forget the previous batch's gradients
            loss.backward()  # the gradient of the loss for every parameter
            optimizer.step()  # move every parameter a little against its gradient
            schedule.step()  # record this step's learning rate, set the next one
            score.add(loss, output, y)
        results = {name: evaluate(model, batches, device) for name, batches in eval_sets.items()}
        history.add_epoch(epoch, score, results, schedule.last_lr, time.perf_counter() - start)
        if progress:
            print(history.describe_epoch(-1, epochs), flush=True)
    return history


def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> tuple[float, float]:
    """Return (mean loss, accuracy in percent) of `model` over `batches`, in eval mode without gradients."""
    model.eval()  # dropout off; batch normalization uses the running statistics it learned
    score = RunningScore(device)
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            output = model(x)
            score.add(F.nll_loss(output, y), output, y)
    return score.result()


def predict(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (predicted classes, true labels) of `model` over `batches`, on the CPU (notebook 07)."""
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            predictions.append(model(x.to(device)).argmax(dim=1).cpu())
            labels.append(y.cpu())
    return torch.cat(predictions), torch.cat(labels)


class RunningScore:
    """Running sums of loss and correct predictions, kept on the device: reading them makes the host wait."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.count = 0

    def add(self, loss: torch.Tensor, output: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: its mean loss, its log-probabilities and its labels."""
        self.loss_sum += loss.detach().float() * len(y)
        self.correct += (output.argmax(dim=1) == y).sum()
        self.count += len(y)

    def result(self) -> tuple[float, float]:
        """Return (mean loss, accuracy in percent) over every batch added."""
        if self.count == 0:
            raise ValueError("no batches were seen: the loader is empty")
        return self.loss_sum.item() / self.count, 100.0 * self.correct.item() / self.count


def with_progress(batches: Iterable[Batch], desc: str, score: RunningScore, enabled: bool) -> Iterator[Batch]:
    """Yield `batches`, drawing a progress bar with the running loss and accuracy when `enabled`."""
    if not enabled:
        yield from batches
        return
    total = len(batches) if hasattr(batches, "__len__") else None
    # A text bar on stdout, also in notebooks: a widget's stored form would read 0% in every viewer but a live one.
    with tqdm(total=total, desc=desc, unit="batch", mininterval=1.0, file=sys.stdout) as bar:
        for step, batch in enumerate(batches, start=1):
            yield batch
            bar.update(1)
            if step % LOG_EVERY == 0:
                loss, acc = score.result()
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}%")


class Schedule:
    """The learning-rate schedule of a run (or none), stepped once per batch, recording what each step used."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 *, hold_after: int | None = None) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler
        self.hold_after = hold_after  # after this many steps the scheduler stops and the rate holds (None: never)
        self.lrs: list[float] = []
        self.momentums: list[float | None] = []  # None for an optimizer without momentum

    def step(self) -> None:
        """Record the rate and momentum the step just taken used, then move the schedule on by one batch."""
        group = self.optimizer.param_groups[0]
        self.lrs.append(float(group["lr"]))
        momentum = group.get("momentum", group.get("betas", (None,))[0])
        self.momentums.append(None if momentum is None else float(momentum))
        if self.scheduler is not None and (self.hold_after is None or len(self.lrs) <= self.hold_after):
            self.scheduler.step()

    @property
    def last_lr(self) -> float:
        """The learning rate of the latest step (the optimizer's rate before any step)."""
        return self.lrs[-1] if self.lrs else float(self.optimizer.param_groups[0]["lr"])

    def trace(self, max_points: int = MAX_TRACE) -> dict[str, list[Any]]:
        """Return the recorded steps (numbered from 1), thinned evenly to at most `max_points`, always with the last."""
        n = len(self.lrs)
        picks = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)}) if n > max_points \
            else list(range(n))
        return {"step": [i + 1 for i in picks], "lr": [self.lrs[i] for i in picks],
                "momentum": [self.momentums[i] for i in picks]}


class NonFiniteLoss(ArithmeticError):
    """The loss stopped being a number (nan or inf): training diverged, usually from too high a learning rate."""


@dataclass
class History:
    """What a run measured: per epoch a dict of figures (see `add_epoch`), plus what is needed to tell runs apart.

    Per epoch: `train_loss` and `train_acc` (running, over the epoch's augmented training batches in train
    mode), then `NAME_loss` and `NAME_acc` for every evaluated set (`test`; `val` and `train_eval` when a
    validation split is held out), `lr` (of the epoch's last step) and `seconds`. `schedule` holds the rate
    and momentum of the recorded steps.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, list[Any]] = field(default_factory=dict)

    def add_epoch(self, epoch: int, score: RunningScore, results: Mapping[str, tuple[float, float]], lr: float,
                  seconds: float) -> None:
        """Append one epoch's figures; raise NonFiniteLoss (keeping the earlier epochs) if a loss is not a number."""
        train_loss, train_acc = score.result()
        stats = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
        for name, (loss, acc) in results.items():
            stats.update({f"{name}_loss": loss, f"{name}_acc": acc})
        broken = [f"{key} {value}" for key, value in stats.items() if not math.isfinite(value)]
        if broken:
            raise NonFiniteLoss(f"{', '.join(broken)} in epoch {epoch}: training diverged; lower the learning rate "
                                "(--lr) and run again")
        self.epochs.append({**stats, "lr": lr, "seconds": seconds})

    def column(self, key: str) -> list[float]:
        """Return one figure across epochs, e.g. history.column("test_acc")."""
        if self.epochs and key not in self.epochs[0]:
            raise KeyError(f"no figure {key!r} in this history; it has {', '.join(self.epochs[0])}")
        return [stats[key] for stats in self.epochs]

    def describe_epoch(self, index: int, epochs: int) -> str:
        """Return one line with an epoch's figures, as `fit` prints it."""
        stats = self.epochs[index]
        sets = [name[: -len("_acc")] for name in stats if name.endswith("_acc") and name != "train_acc"]
        evals = " | ".join(f"{name} loss {stats[f'{name}_loss']:.4f} acc {stats[f'{name}_acc']:.2f}%" for name in sets)
        return (f"epoch {stats['epoch']:2d}/{epochs}: train loss {stats['train_loss']:.4f} acc "
                f"{stats['train_acc']:.2f}% | {evals} | lr {stats['lr']:.4g} | {stats['seconds']:.1f} s")

    def to_dict(self) -> dict[str, Any]:
        """Return the history as plain JSON-ready data."""
        return {"meta": self.meta, "epochs": self.epochs, "schedule": self.schedule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Rebuild a history from `to_dict()` output (older files have no schedule)."""
        return cls([dict(stats) for stats in data["epochs"]], dict(data.get("meta", {})),
                   dict(data.get("schedule", {})))

    def save(self, path: Path) -> None:
        """Write the history as strict JSON to `path` (no NaN or Infinity, which JSON does not have), atomically."""
        atomic_write(Path(path), (json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> History:
        """Read a history written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
