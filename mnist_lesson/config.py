"""Training recipes: one typed, defaulted object per way of training a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; every registered model carries its own default recipe."""

    epochs: int = 15  # full passes over the 60,000 training images
    batch_size: int = 128  # training mini-batch size
    lr: float = 0.01  # SGD learning rate (the peak rate when schedule="onecycle")
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 0.0  # L2 penalty added by the optimizer
    schedule: Literal["constant", "onecycle", "step"] = "constant"  # learning-rate schedule
    step_size: int = 6  # epochs between decays when schedule="step"
    gamma: float = 0.1  # decay factor when schedule="step"
    rotate_degrees: float = 0.0  # augmentation: random rotation in [-d, d] degrees (0 = off)
    translate: float = 0.0  # augmentation: random shift up to this fraction of the image side
    data: Literal["memory", "dataloader"] = "memory"  # in-memory tensors or torchvision's DataLoader
    eval_batch_size: int = 1000  # batch size for evaluating on the test set
    channels_last: bool = True  # NHWC weights/activations: ~25% faster convs on a 2-core CPU, same numbers

    def with_overrides(self, **changes: Any) -> Recipe:
        """Return a copy with the given fields changed; None values keep the default."""
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise TypeError(f"Recipe has no field(s) {sorted(unknown)}; known fields: {sorted(asdict(self))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as a plain dict (for JSON run records)."""
        return asdict(self)


GPU_EVAL_BATCH = 10_000  # the whole test set in one batch: on a GPU, fewer and fuller launches


@dataclass(frozen=True)
class Speed:
    """How a run executes, not what it learns: levers that change its wall time (benchmarks/speed.py)."""

    amp: bool = False  # bfloat16 autocast where the device has native bfloat16 (train.native_bf16); else a warning
    compile: bool = False  # torch.compile the model; seconds to a minute of compiling first; no gain on the project CPU
    eval_batch_size: int | None = None  # None: GPU_EVAL_BATCH on a GPU, the recipe's own elsewhere

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict (for run records)."""
        return asdict(self)
