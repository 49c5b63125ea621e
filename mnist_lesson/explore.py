"""The cell to play with: design knobs in; the layer table, the parameter count against the budget and the
receptive field on a digit out, at once and without training (notebook 06).

`explore(...)` takes the knobs as plain arguments, prints the same text everywhere (Jupyter, Colab, a
terminal, nbval) and returns the picture; `explore_widgets()` puts the same knobs on ipywidgets sliders
(Colab ships ipywidgets). The model it builds (`KnobNet`) is an ordinary nn.Module to pass to
`layer_table`, `count_parameters` or `train_recipe`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import BUDGET, UsageError
from mnist_lesson.device import pick_device
from mnist_lesson.inside import plot_rf_on_digit
from mnist_lesson.loaders import load_split
from mnist_lesson.models import conv_block, transition_block
from mnist_lesson.receptive_field import layer_table
from mnist_lesson.recipes import STEP_RECIPE
from mnist_lesson.runs import train_recipe


@dataclass(frozen=True)
class Knobs:
    """The design choices the course teaches, as values to turn."""

    widths: tuple[tuple[int, ...], ...] = ((8, 16, 32), (16, 32), (16, 16))  # 3x3 conv channels, block by block
    padded: int = 1  # how many of the first 3x3 convs keep the map's size (padding 1)
    pool_after: int = 1  # a 2x2 max-pool after this block (counted from 1); 0 for none
    transition: int = 0  # a 1x1 conv down to this many channels after every block but the last; 0 for none
    batch_norm: bool = True  # BatchNorm after every conv
    dropout: float = 0.0  # Dropout2d after every conv
    gap: bool = True  # global average pooling and a 1x1 conv; False: one conv as large as the last map
    head_width: int = 0  # with gap, a hidden 1x1 layer of this width after the pool; 0 for none

    def __post_init__(self) -> None:
        if not self.widths or any(not block or any(w < 1 for w in block) for block in self.widths):
            raise UsageError(f"widths must be non-empty blocks of positive channel counts, got {self.widths!r}")
        if not 0 <= self.pool_after <= len(self.widths):
            raise UsageError(f"pool_after must be 0 (no pool) or a block number 1-{len(self.widths)}, "
                             f"got {self.pool_after}")
        if self.padded < 0 or self.transition < 0 or self.head_width < 0 or not 0 <= self.dropout < 1:
            raise UsageError("padded, transition and head_width must be >= 0 and dropout in [0, 1)")


# The assignment's model, as knobs: 13,816 parameters.
ASSIGNMENT_KNOBS = Knobs(widths=((8, 16, 24), (16, 24), (16, 16)), padded=2, pool_after=1, transition=8,
                         batch_norm=True, dropout=0.1, gap=True, head_width=16)


class KnobNet(nn.Module):
    """A network built from `Knobs`: blocks of 3x3 convs, 1x1 transitions, one max-pool, then a head."""

    def __init__(self, knobs: Knobs, side: int = 28) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, convs = 1, 0
        for number, block in enumerate(knobs.widths, start=1):
            for width in block:
                padding = 1 if convs < knobs.padded else 0
                layers.append(conv_block(channels, width, padding=padding, dropout=knobs.dropout,
                                         batch_norm=knobs.batch_norm))
                channels, convs, side = width, convs + 1, side - 2 * (1 - padding)
            last = number == len(knobs.widths)
            if knobs.transition and not last:
                layers.append(transition_block(channels, knobs.transition, pool=False))
                channels = knobs.transition
            if number == knobs.pool_after:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            if side < 1:
                raise UsageError(f"the map shrinks to nothing in block {number}: pad more convs, pool later, or use "
                                 "fewer convs")
        self.features = nn.Sequential(*layers)
        if knobs.gap:
            head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)]
            if knobs.head_width:
                head.append(conv_block(channels, knobs.head_width, kernel_size=1, dropout=knobs.dropout,
                                       batch_norm=knobs.batch_norm))
                channels = knobs.head_width
            head.append(nn.Conv2d(channels, 10, 1, bias=False))
            self.head = nn.Sequential(*head)
        else:
            self.head = nn.Conv2d(channels, 10, side)  # one weight per class, channel and position of the last map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(self.features(x)).flatten(1), dim=1)


def summary_lines(model: nn.Module, limit: int = BUDGET) -> list[str]:
    """Return the explorer's text: the layer table, then the parameter count against `limit`."""
    params = count_parameters(model)
    verdict = (f"under the budget by {limit - params:,}" if params < limit
               else f"OVER the budget by {params - limit + 1:,}")
    return [layer_table(model).to_text(), f"{params:,} parameters against fewer than {limit:,}: {verdict}"]


def explore(knobs: Knobs | None = None, *, train: bool = False, limit: int = BUDGET, **changes: Any) -> Figure:
    """Print the layer table and the parameter count of the network the knobs describe; return its receptive
    fields drawn on a test digit. `train=True` adds a smoke-sized training run (seconds) and its accuracy."""
    knobs = Knobs(**{**asdict(knobs or Knobs()), **changes})
    model = KnobNet(knobs)
    print("\n".join(summary_lines(model, limit)))
    if train:
        _, history = train_recipe(lambda: KnobNet(knobs), STEP_RECIPE, device=pick_device(), progress=False,
                                  smoke=True)
        print(f"after a smoke-sized training (one epoch of a few batches): test accuracy "
              f"{history.epochs[-1]['test_acc']:.1f}% on a few test batches")
    images, _ = load_split(False)
    return plot_rf_on_digit(model, images[0].float() / 255, title=f"{count_parameters(model):,} parameters")


def explore_widgets() -> Any:
    """Return ipywidgets controls for the main knobs, redrawing `explore` on every change (Jupyter and Colab)."""
    try:
        import ipywidgets as widgets
    except ImportError as error:
        raise ImportError("explore_widgets needs ipywidgets, which Colab ships and `pip install mnist_lesson` "
                          "installs; here it is missing: `pip install ipywidgets`, then restart the kernel, or "
                          "call explore(widths=..., dropout=...) directly, which needs no widgets") from error

    def show(width: int, pool_after: int, transition: int, batch_norm: bool, dropout: float, gap: bool,
             head_width: int) -> Figure:
        widths = ((width // 4, width // 2, width), (width // 2, width), (width // 2, width // 2))
        return explore(widths=widths, pool_after=pool_after, transition=transition, batch_norm=batch_norm,
                       dropout=dropout, gap=gap, head_width=head_width)

    return widgets.interactive(
        show, width=widgets.IntSlider(32, 8, 64, 4, description="widest conv"),
        pool_after=widgets.Dropdown(options=[("no pool", 0), ("block 1", 1), ("block 2", 2)], value=1,
                                    description="max-pool"),
        transition=widgets.IntSlider(0, 0, 16, 4, description="1x1 to"), batch_norm=True,
        dropout=widgets.FloatSlider(0.0, min=0.0, max=0.3, step=0.05), gap=True,
        head_width=widgets.IntSlider(0, 0, 32, 8, description="head width"))
