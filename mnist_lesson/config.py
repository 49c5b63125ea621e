"""The course's settings: its constants, how a model learns (`Recipe`, `Augment`), how a run executes
(`Speed`), smoke mode, and the error for a setting that cannot work (`UsageError`).

A `Recipe` says what is learned; a `Speed` says how fast the same learning runs. Recorded recipes are
compared tolerantly (`Recipe.matches`, through `Recipe.from_dict`): a results file written before a new
defaulted field existed still matches when the field is at its default. Introduced in notebook 00.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

# --- the course's specification ----------------------------------------------------------------------

TARGET = 99.40  # percent test accuracy the course asks for
BUDGET = 20_000  # a model must have fewer parameters than this, counted as the assignment counts (all of them)
LAST_EPOCHS = 3  # a claim holds only if every one of the last 3 epochs reaches the target
MAX_EPOCHS = 15  # a claim may train for at most this many epochs
CLAIM_SEEDS = tuple(range(10))  # a claim is made only when it holds on every one of these seeds
UNSEEN_SEEDS = tuple(range(10, 20))  # seeds no recipe choice had seen, run after the recipes were fixed (issue 24)
TRAIN_IMAGES = 60_000  # MNIST's training split
VALIDATION_IMAGES = 10_000  # the last 10,000 of the 60,000 training images: design choices are judged on them


class UsageError(ValueError):
    """A setting or argument that cannot work; the message says which and what to use instead."""


# --- smoke mode: tiny runs for tests, resolved where a run starts, never inside the loop ---------------

SMOKE_ENV = "MNIST_LESSON_SMOKE"
_ON, _OFF = {"1", "true", "yes"}, {"", "0", "false", "no"}


def smoke_mode(environ: Mapping[str, str] = os.environ) -> bool:
    """Return whether $MNIST_LESSON_SMOKE asks for tiny runs; raise UsageError for a value it does not know."""
    value = environ.get(SMOKE_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise UsageError(f"{SMOKE_ENV}={environ[SMOKE_ENV]!r} is not understood: use 1, true or yes for smoke mode; "
                     "0, false, no or nothing for full runs")


@dataclass(frozen=True)
class Limits:
    """How far a run goes: smoke mode is one epoch over a few batches, evaluated on a couple of batches."""

    epochs: int | None = None  # None: the recipe's epochs
    train_batches: int | None = None  # None: every training batch
    eval_batches: int | None = None  # None: every evaluation batch


SMOKE_LIMITS = Limits(epochs=1, train_batches=20, eval_batches=2)
NO_LIMITS = Limits()


def limits_for(smoke: bool) -> Limits:
    """Return the limits of a smoke run, or none."""
    return SMOKE_LIMITS if smoke else NO_LIMITS


# --- what is learned ------------------------------------------------------------------------------------


def _check_number(name: str, value: object, *, low: float = 0.0, strict: bool = False,
                  integer: bool = False) -> None:
    """Raise UsageError unless `value` is a finite number >= low (> low when strict), an int when asked."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite {'whole ' if integer else ''}number, got {value!r}")
    if value < low or (strict and value == low):
        raise UsageError(f"{name} must be {'greater than' if strict else 'at least'} {low:g}, got {value!r}")


@dataclass(frozen=True)
class Augment:
    """Random changes to every training image, drawn anew each epoch; both data paths take this one object.

    A new kind of augmentation is a field here (default: off) and a few lines where images are transformed
    (`loaders.augment_batch` for the in-memory path, `loaders.torchvision_transform` for the DataLoader).
    """

    rotation: float = 0.0  # degrees: each image turns by a uniform random angle in [-rotation, rotation]
    shift: float = 0.0  # fraction of the side: each image moves by up to this much along x and along y

    def __post_init__(self) -> None:
        _check_number("augment.rotation", self.rotation)
        _check_number("augment.shift", self.shift)
        if self.rotation > 180 or self.shift >= 1:
            raise UsageError(f"augment out of range: rotation {self.rotation} (at most 180 degrees), shift "
                             f"{self.shift} (below 1, a fraction of the image side)")

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: every registered model carries its own default recipe."""

    epochs: int = 15  # full passes over the training images
    batch_size: int = 128  # training mini-batch size
    lr: float = 0.01  # SGD learning rate (the peak rate when schedule="onecycle")
    momentum: float = 0.9  # SGD momentum (one-cycle cycles it between 0.85 and 0.95 instead; see notebook 07)
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 0.0  # L2 penalty added by the optimizer
    schedule: Literal["constant", "onecycle", "step"] = "constant"  # learning-rate schedule, stepped every batch
    step_size: int = 6  # epochs between decays when schedule="step"
    gamma: float = 0.1  # decay factor when schedule="step"
    augment: Augment = Augment()  # random rotation and shift of the training images (off by default)
    warmup: float = 0.3  # one-cycle: the share of the steps spent raising the rate (the rest anneals it)
    settle: int = 0  # one-cycle: last epochs that hold the cycle's final rate (the cycle runs over the others)
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated instead of them (0: off)

    def __post_init__(self) -> None:
        _check_number("epochs", self.epochs, low=1, integer=True)
        _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("lr", self.lr, strict=True)
        _check_number("momentum", self.momentum)
        _check_number("weight_decay", self.weight_decay)
        _check_number("step_size", self.step_size, low=1, integer=True)
        _check_number("gamma", self.gamma, strict=True)
        if not 0 < self.warmup < 1 or not 0 <= self.ema < 1:
            raise UsageError(f"warmup must be in (0, 1) and ema in [0, 1), got {self.warmup} and {self.ema}")
        if self.schedule not in ("constant", "onecycle", "step"):
            raise UsageError(f"unknown schedule {self.schedule!r}; use constant, onecycle or step")
        _check_number("settle", self.settle, integer=True)
        if self.settle and (self.schedule != "onecycle" or self.settle >= self.epochs):
            raise UsageError(f"settle={self.settle} needs schedule='onecycle' and fewer settling epochs than epochs "
                             f"({self.epochs}); got schedule={self.schedule!r}. Use settle=0 to switch it off")
        if not isinstance(self.augment, Augment):
            raise UsageError(f"augment must be an Augment(rotation=..., shift=...), got {self.augment!r}")

    def with_overrides(self, **changes: Any) -> Recipe:
        """Return a copy with the given fields changed; None values keep the current ones."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            known = [f.name for f in fields(self)]
            raise UsageError(f"Recipe has no field(s) {sorted(unknown)}; known fields: {known}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as plain JSON-ready data (for run records)."""
        return asdict(self)

    def changes_from(self, other: Recipe) -> list[str]:
        """Return the fields where this recipe differs from `other`, as "name=value" (e.g. "augment.shift=0.05")."""
        mine, theirs = _flat(self.to_dict()), _flat(other.to_dict())
        return [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                for name, value in mine.items() if value != theirs[name]]

    def acting_fields(self) -> dict[str, Any]:
        """Return the fields that act on training, as {"name": value} with the augmentation's as "augment.NAME".

        Left out: fields the schedule ignores (momentum under one-cycle, which cycles it itself; step_size and gamma
        unless the schedule is "step"; warmup and settle unless it is "onecycle") and switches that are off
        (nesterov=False, weight_decay=0, no rotation or shift, ema=0, settle=0). Introduced in notebook 07."""
        inert = {"momentum"} if self.schedule == "onecycle" else set()
        inert |= set() if self.schedule == "step" else {"step_size", "gamma"}
        inert |= set() if self.schedule == "onecycle" else {"warmup", "settle"}
        return {name: value for name, value in _flat(self.to_dict()).items()
                if name not in inert and not (name in _OFF_WHEN_FALSY and not value)}

    def describe(self) -> str:
        """Return the recipe as its acting fields, "epochs=15, batch_size=64, ..." (what a notebook prints)."""
        text = ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                         for name, value in self.acting_fields().items())
        return text + ("; momentum cycled between 0.85 and 0.95 by one-cycle" if self.schedule == "onecycle" else "")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Rebuild a recorded recipe: fields it lacks take today's defaults, older spellings are read too."""
        data = dict(data)
        for knob in _EXECUTION_FIELDS:  # recorded on recipes before they moved to Speed; they change no result
            data.pop(knob, None)
        legacy = {key: data.pop(key) for key in _LEGACY_AUGMENT if key in data}
        augment = data.pop("augment", None)
        if legacy and augment is not None:
            raise ValueError(f"a recipe records both augment and {sorted(legacy)}")
        if legacy:
            augment = {_LEGACY_AUGMENT[key]: value for key, value in legacy.items()}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"recorded recipe has field(s) {sorted(unknown)} this version does not know; "
                             "update the package")
        return cls(**data, **({"augment": Augment(**augment)} if augment is not None else {}))

    def matches(self, recorded: Mapping[str, Any]) -> bool:
        """Return whether a recorded recipe describes this one (tolerant to fields added since it was written)."""
        try:
            return Recipe.from_dict(recorded) == self
        except (ValueError, TypeError):
            return False


def _flat(recipe: dict[str, Any]) -> dict[str, Any]:
    """Return a recipe's fields with the augmentation's spelled out as augment.NAME."""
    recipe = dict(recipe)
    recipe.update({f"augment.{name}": value for name, value in recipe.pop("augment").items()})
    return recipe


# Fields that recipes recorded before they moved to Speed, and the old names of the augmentation settings.
_EXECUTION_FIELDS = ("data", "eval_batch_size", "channels_last")
_LEGACY_AUGMENT = {"rotate_degrees": "rotation", "translate": "shift"}
# Fields whose off value (False, 0) switches their effect off: `Recipe.acting_fields` leaves them out when off.
_OFF_WHEN_FALSY = ("nesterov", "weight_decay", "augment.rotation", "augment.shift", "ema", "settle")


# --- how a run executes ---------------------------------------------------------------------------------

GPU_EVAL_BATCH = 10_000  # the whole test set in one batch: on a GPU, fewer and fuller launches
CPU_EVAL_BATCH = 1_000  # evaluation batch size elsewhere


@dataclass(frozen=True)
class Speed:
    """How a run executes, not what it learns: levers that change its wall time (benchmarks/speed.py)."""

    data: Literal["memory", "dataloader"] = "memory"  # whole split on the device, or torchvision's DataLoader
    channels_last: bool = True  # NHWC layout: faster convolutions on the project's CPU, same numbers
    eval_batch_size: int | None = None  # None: GPU_EVAL_BATCH on a GPU, 1,000 elsewhere
    amp: bool = False  # bfloat16 autocast where the device has native bfloat16; elsewhere a warning
    compile: bool = False  # torch.compile the model; seconds to a minute of compiling first
    graph: bool = False  # replay each training step from a CUDA graph (mnist_lesson.graphed); CUDA only
    autotune: bool = True  # on a GPU, let cuDNN time its algorithms per input shape (seconds in the first epoch)

    def __post_init__(self) -> None:
        if self.data not in ("memory", "dataloader"):
            raise UsageError(f"unknown data path {self.data!r}; use memory or dataloader")
        if self.eval_batch_size is not None:
            _check_number("eval_batch_size", self.eval_batch_size, low=1, integer=True)
        if self.graph and (self.compile or self.amp):
            raise UsageError("graph=True (--graph) records the eager float32 step; it does not combine with compile "
                             "or amp: choose one")

    def to_dict(self) -> dict[str, Any]:
        """Return the options as plain data (for run records)."""
        return asdict(self)
