"""Parameter budget: how many parameters a model has, where they sit, and whether it stays under a limit.

`count_parameters` is the one count of the project: every parameter tensor once, trainable or not, as
the assignment counts and as torchinfo reports "Total params" (the tests cross-check the two). The limit
is strict, as in the assignment's "fewer than 20,000 parameters": exactly `limit` is over budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

ADVICE = (
    "To shrink it: squeeze channels with 1x1 transition convs before the expensive 3x3 convs, use fewer "
    "channels in the heaviest block, and end with global average pooling instead of a big final conv or "
    "Linear layer."
)


class BudgetError(ValueError):
    """Raised when a model has as many parameters as the limit or more."""


@dataclass(frozen=True)
class BlockParams:
    """The parameters of one block (a submodule at the chosen depth) and its share of the total."""

    name: str  # dotted module path, e.g. "conv1" or "conv1.0"
    params: int  # parameters in the block, a tensor shared with an earlier block not counted again
    percent: float  # 100 * params / model total


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters of `model`: every tensor once, trainable or not (notebook 01)."""
    return sum(p.numel() for p in _check_model(model).parameters())


def _blocks(module: nn.Module, prefix: str, levels_left: int) -> Iterator[tuple[str, nn.Module, bool]]:
    """Yield (name, module, recurse) for every block; recurse=False marks a container's own parameters."""
    children = list(module.named_children())
    if levels_left == 0 or not children:
        yield prefix, module, True
        return
    if any(True for _ in module.parameters(recurse=False)):
        # Parameters held by a container itself would otherwise belong to no block.
        yield prefix or type(module).__name__, module, False
    for name, child in children:
        yield from _blocks(child, f"{prefix}.{name}" if prefix else name, levels_left - 1)


def block_params(model: nn.Module, depth: int = 1) -> list[BlockParams]:
    """Return the parameter count and share of each block, top-level children by default (notebook 02)."""
    _check_model(model)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    total = count_parameters(model)
    seen: set[int] = set()
    blocks = []
    for name, module, recurse in _blocks(model, "", depth):
        own = [p for p in module.parameters(recurse=recurse) if id(p) not in seen]
        seen.update(id(p) for p in own)
        count = sum(p.numel() for p in own)
        blocks.append(BlockParams(name, count, 100.0 * count / total if total else 0.0))
    return blocks


def _check_limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int (e.g. 20_000), got {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    return limit


def _budget_line(total: int, limit: int) -> str:
    if total < limit:
        return f"Budget < {limit:,}: under budget by {limit - total:,}"
    return f"Budget < {limit:,}: OVER budget by {total - limit + 1:,} (remove at least that many)"


def parameter_report(model: nn.Module, limit: int | None = None) -> str:
    """Return a text table of parameters per block with the total, and the budget verdict if `limit`."""
    if limit is not None:
        _check_limit(limit)
    blocks = block_params(model)
    total = count_parameters(model)
    cells = [("block", "params", "%")]
    cells += [(b.name, f"{b.params:,}", f"{b.percent:.1f}%") for b in blocks]
    cells.append(("total", f"{total:,}", "100.0%" if total else "0.0%"))
    widths = [max(len(row[col]) for row in cells) for col in range(3)]
    lines = [f"{n.ljust(widths[0])}  {p.rjust(widths[1])}  {s.rjust(widths[2])}" for n, p, s in cells]
    if limit is not None:
        lines.append(_budget_line(total, limit))
    return "\n".join(lines)


def check_budget(model: nn.Module, limit: int) -> int:
    """Return the model's parameter count; raise BudgetError unless it is strictly below `limit`."""
    _check_limit(limit)
    total = count_parameters(model)
    if total < limit:
        return total
    heaviest = sorted(block_params(model), key=lambda b: b.params, reverse=True)[:3]
    listed = ", ".join(f"{b.name} {b.params:,} ({b.percent:.1f}%)" for b in heaviest if b.params)
    raise BudgetError(
        f"{type(model).__name__} has {total:,} parameters; the budget is fewer than {limit:,} "
        f"(over by {total - limit + 1:,}). Heaviest blocks: {listed}. {ADVICE}"
    )


KINDS = ("full kxk conv", "depthwise conv", "1x1 conv", "normalization", "linear", "other")


def layer_kind(module: nn.Module) -> str:
    """Return the kind of a layer that holds parameters: full kxk conv, depthwise conv, 1x1 conv, normalization,
    linear or other."""
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return "1x1 conv"
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1:
        return "depthwise conv"
    if isinstance(module, nn.Conv2d):
        return "full kxk conv"
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        return "normalization"
    if isinstance(module, nn.Linear):
        return "linear"
    return "other"


def params_by_kind(model: nn.Module) -> dict[str, int]:
    """Return the model's parameters grouped by layer kind (`layer_kind`), every kind listed (notebook 08)."""
    kinds = dict.fromkeys(KINDS, 0)
    for module in _check_model(model).modules():
        kinds[layer_kind(module)] += sum(p.numel() for p in module.parameters(recurse=False))
    return kinds
