"""Seeing inside a network: what each layer sees of a digit, what it responds to, where it errs.

Measurements and their figures, each figure a function that takes a model (or what a run measured) and
returns a matplotlib Figure, closed as in `plots`:
- the receptive field of the centre unit drawn on a real digit after each block (`rf_boxes`,
  `plot_rf_on_digit`), beside the effective receptive field measured from input gradients
  (`effective_receptive_field`; Luo, Li, Urtasun, Zemel, "Understanding the Effective Receptive Field in
  Deep Convolutional Neural Networks", NeurIPS 2016) (notebooks 02, 03, 08);
- feature maps of one digit after each block (`plot_feature_maps`) and activation statistics over
  training, recorded by `ActivationStats` (`plot_activation_stats`) (notebooks 02 and 04);
- how a network starts: how much its scores depend on the digit and how large each layer's gradient is against
  its weights, on one batch at initialization (`start_figures`), and which digits it predicts
  (`prediction_shares`) (notebook 03);
- the confusion matrix and per-class accuracy (`confusion_matrix`, `most_confused`, `plot_confusion`)
  (notebook 07).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from mnist_lesson.device import model_device
from mnist_lesson.receptive_field import layer_table

# --- how a network starts ------------------------------------------------------------------------------

@dataclass(frozen=True)
class StartFigures:
    """One batch through a freshly built network in train mode: its scores and each weight's gradient."""

    loss: float
    score_spread: float  # standard deviation of a class's score across the batch's images, averaged over classes
    same_class: float  # share of the batch's images given the most frequent predicted class, in percent
    gradient_ratios: dict[str, float]  # per weight of more than one dimension: |gradient| / |weight|


def start_figures(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StartFigures:
    """Return what one batch measures in `model` as built: loss, how much scores vary by image, gradient sizes."""
    device = model_device(model)
    model.train()
    model.zero_grad()
    output = model(x.to(device))
    loss = nn.functional.nll_loss(output, y.to(device))
    loss.backward()
    ratios = {name: (p.grad.norm() / p.norm()).item() for name, p in model.named_parameters()
              if p.grad is not None and p.dim() > 1}
    model.zero_grad()
    counts = torch.bincount(output.argmax(dim=1), minlength=output.shape[1])
    return StartFigures(loss.item(), output.detach().std(dim=0).mean().item(),
                        100.0 * counts.max().item() / len(y), ratios)


def prediction_shares(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (share of images predicted as each class, share of images of each class), in percent, in eval mode."""
    device = model_device(model)
    model.eval()
    predicted = torch.zeros(10, dtype=torch.long)
    true = torch.zeros(10, dtype=torch.long)
    with torch.no_grad():
        for x, y in batches:
            predicted += torch.bincount(model(x.to(device)).argmax(dim=1).cpu(), minlength=10)
            true += torch.bincount(y.cpu(), minlength=10)
    return 100.0 * predicted / predicted.sum(), 100.0 * true / true.sum()


# --- the receptive field on a digit ---------------------------------------------------------------------


@dataclass(frozen=True)
class RFBox:
    """The receptive field of a layer's centre unit, in input pixel coordinates (pixel centres at 0, 1, ...)."""

    layer: str  # the table row it belongs to
    block: str  # the top-level block the row ends
    rf: int
    centre: float  # the field's centre (x and y: the table tracks square maps)

    @property
    def first(self) -> float:
        """The centre of the first input pixel inside the field (may lie outside the image, in the padding)."""
        return self.centre - (self.rf - 1) / 2

    @property
    def last(self) -> float:
        """The centre of the last input pixel inside the field."""
        return self.centre + (self.rf - 1) / 2


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return the model's blocks: its top-level children, or, when it keeps its layers in one or two containers
    (`features`, `head`), the children of those."""
    top = list(model.named_children())
    if len(top) >= 3:
        return top
    return [(f"{name}.{inner}", child) if inner else (name, child) for name, module in top
            for inner, child in (list(module.named_children()) or [("", module)])]


def rf_boxes(model: nn.Module, input_size: tuple[int, int, int] = (1, 28, 28)) -> list[RFBox]:
    """Return the centre unit's receptive field after each block (`blocks`) that outputs a spatial map and grows
    the field, from the model's layer table."""
    names = [name for name, _ in blocks(model)]
    boxes: dict[str, RFBox] = {}
    for row in layer_table(model, input_size).rows:
        if len(row.out_shape) != 3:
            continue
        side = row.out_shape[-1]
        centre = row.start + ((side - 1) // 2) * row.jump  # the unit at index (side - 1) // 2, in input pixels
        layer = row.name.split(" (call")[0]
        block = next((name for name in names if layer == name or layer.startswith(f"{name}.")), layer)
        boxes[block] = RFBox(row.name, block, row.rf, centre)  # the block's last spatial row wins
    grown: list[RFBox] = []
    for box in boxes.values():
        if not grown or box.rf != grown[-1].rf:
            grown.append(box)
    return grown


def effective_receptive_field(model: nn.Module, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Return |d unit / d input| averaged over `images` [N, 1, H, W], on the CPU: the effective receptive field of
    the centre unit (all channels summed) of `layer` (default: the last layer with a spatial output larger than
    1x1), measured on the model's device."""
    table = layer_table(model, tuple(images.shape[1:]))
    spatial = [row for row in table.rows if len(row.out_shape) == 3 and row.out_shape[-1] > 1]
    if not spatial:
        raise ValueError("the model has no layer with a spatial output larger than 1x1")
    name = layer or spatial[-1].name
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"no layer named {name!r}; layers with spatial outputs: {[r.name for r in spatial]}")
    seen: list[torch.Tensor] = []
    handle = modules[name].register_forward_hook(lambda module, args, out: seen.append(out))
    was_training = model.training
    model.eval()
    try:
        x = images.detach().to(model_device(model)).clone().float().requires_grad_(True)
        model(x)
        out = seen[-1]
        c = (out.shape[-1] - 1) // 2
        out[:, :, c, c].sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    return x.grad.abs().mean(dim=(0, 1)).cpu()


def plot_rf_on_digit(model: nn.Module, digit: torch.Tensor, erf: torch.Tensor | None = None,
                     title: str = "") -> Figure:
    """Return a digit [28, 28] with the receptive field of the centre unit after each block drawn as a box,
    and beside it, when given, the effective receptive field `erf` [28, 28] of the last block."""
    boxes = rf_boxes(model, (1, *digit.shape[-2:]))
    fig, axes = plt.subplots(1, 2 if erf is not None else 1, figsize=(10 if erf is not None else 5.5, 5),
                             squeeze=False)
    ax = axes[0, 0]
    ax.imshow(digit.detach().cpu().reshape(digit.shape[-2:]).numpy(), cmap="gray_r")
    colors = plt.get_cmap("viridis")
    for i, box in enumerate(boxes):
        color = colors(i / max(1, len(boxes) - 1))
        ax.add_patch(Rectangle((box.first - 0.5, box.first - 0.5), box.rf, box.rf, fill=False, color=color,
                               linewidth=2, label=f"after {box.block}: {box.rf}x{box.rf}"))
    side = digit.shape[-1]
    margin = max([0.0] + [max(-box.first, box.last - side + 1) for box in boxes])
    ax.set(xlim=(-0.5 - margin, side - 0.5 + margin), ylim=(side - 0.5 + margin, -0.5 - margin),
           title="theoretical receptive field of the centre unit")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0) if erf is None else (0.0, -0.05), fontsize="small",
              ncol=1 if erf is None else 2)
    if erf is not None:
        shown = axes[0, 1].imshow(erf.detach().cpu().numpy(), cmap="magma")
        last = boxes[-1] if boxes else None
        if last is not None:
            axes[0, 1].add_patch(Rectangle((last.first - 0.5, last.first - 0.5), last.rf, last.rf, fill=False,
                                           color="white", linestyle="--", linewidth=1))
        axes[0, 1].set(title="effective receptive field (|input gradient|)", xlim=(-0.5, side - 0.5),
                       ylim=(side - 0.5, -0.5))
        fig.colorbar(shown, ax=axes[0, 1], fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def erf_share(erf: torch.Tensor, box: RFBox, fraction: float = 0.5) -> tuple[int, float]:
    """Return (side of the smallest centred square holding `fraction` of the effective field's weight, that
    side as a share of the theoretical field's side): how much of its field a unit really uses."""
    total = erf.sum()
    side = erf.shape[-1]
    centre = round(box.centre)
    for half in range(side):
        lo, hi = max(0, centre - half), min(side, centre + half + 1)
        if erf[lo:hi, lo:hi].sum() >= fraction * total:
            return hi - lo, (hi - lo) / box.rf
    return side, side / box.rf


# --- feature maps and activation statistics ------------------------------------------------------------


def block_outputs(model: nn.Module, images: torch.Tensor, train_mode: bool = False) -> dict[str, torch.Tensor]:
    """Return the output [N, C, h, w] of every block (`blocks`) with a spatial map, on the CPU, for images
    [N, 1, H, W] or one image [1, H, W] (run on the model's device), without gradients: in eval mode, or with
    `train_mode` as a training batch sees the network (batch normalization using the batch's own statistics;
    dropout on)."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [child.register_forward_hook(lambda module, args, out, name=name: outputs.__setitem__(name, out))
               for name, child in blocks(model)]
    was_training = model.training
    model.train(train_mode)
    try:
        with torch.no_grad():
            model(images.reshape(-1, *images.shape[-3:]).to(model_device(model)).float())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: out.cpu() for name, out in outputs.items() if out.dim() == 4 and out.shape[-1] > 1}


def plot_feature_maps(model: nn.Module, image: torch.Tensor, channels: int = 6, title: str = "") -> Figure:
    """Return a grid: one row per block with a spatial output, its first `channels` feature maps for one digit."""
    outputs = {name: out[0] for name, out in block_outputs(model, image.reshape(1, *image.shape[-2:])).items()}
    fig, axes = plt.subplots(len(outputs) + 1, channels, figsize=(channels * 1.4, (len(outputs) + 1) * 1.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image.detach().cpu().reshape(image.shape[-2:]).numpy(), cmap="gray_r")
    axes[0, 0].set_title("input", fontsize="small")
    for row, (name, out) in enumerate(outputs.items(), start=1):
        for col in range(min(channels, out.shape[0])):
            axes[row, col].imshow(out[col].cpu().numpy(), cmap="viridis")
            axes[row, col].set_title(f"{name} ch {col} ({out.shape[-1]}x{out.shape[-1]})", fontsize="x-small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


@dataclass
class ActivationStats:
    """Mean and spread of every conv layer's output, recorded every `every` training batches by forward hooks.

    Use it around the build of a model: `stats = ActivationStats(); train_recipe(lambda: stats.attach(build()),
    ...)`; then `plot_activation_stats(stats)`. Only batches in train mode are recorded.
    """

    every: int = 10
    means: dict[str, list[float]] = field(default_factory=dict)
    stds: dict[str, list[float]] = field(default_factory=dict)
    _calls: dict[str, int] = field(default_factory=dict)

    def attach(self, model: nn.Module) -> nn.Module:
        """Hook every Conv2d of `model` (recording its output after the layers up to the next conv); return it."""
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                self.means[name], self.stds[name], self._calls[name] = [], [], 0
                module.register_forward_hook(lambda m, args, out, name=name: self._record(m, name, out))
        return model

    def _record(self, module: nn.Module, name: str, out: torch.Tensor) -> None:
        if not module.training:
            return
        self._calls[name] += 1
        if self._calls[name] % self.every == 1 or self.every == 1:
            detached = out.detach().float()
            self.means[name].append(detached.mean().item())
            self.stds[name].append(detached.std().item())


def plot_activation_stats(runs: dict[str, ActivationStats], layers: Sequence[str] | None = None) -> Figure:
    """Return, per run, the mean and standard deviation of chosen conv outputs over training (notebook 04)."""
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 6), squeeze=False, sharex="col")
    for col, (label, stats) in enumerate(runs.items()):
        names = list(layers or stats.means)
        colors = plt.get_cmap("viridis")
        for i, name in enumerate(names):
            color = colors(i / max(1, len(names) - 1))
            steps = [k * stats.every for k in range(len(stats.means[name]))]
            axes[0, col].plot(steps, stats.means[name], color=color, label=name)
            axes[1, col].plot(steps, stats.stds[name], color=color, label=name)
        axes[0, col].set(title=f"{label}: mean of each conv's output", ylabel="mean")
        axes[1, col].set(title=f"{label}: spread (standard deviation)", ylabel="std", xlabel="training batch",
                         yscale="log")
        axes[0, col].legend(fontsize="x-small", ncol=2)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


# --- errors by class ---------------------------------------------------------------------------------------


def confusion_matrix(predicted: torch.Tensor, true: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """Return the [classes, classes] count matrix: row = true class, column = predicted class."""
    index = true.long().cpu() * classes + predicted.long().cpu()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def most_confused(matrix: torch.Tensor, k: int = 3) -> list[tuple[int, int, int]]:
    """Return the `k` most frequent mistakes as (true class, predicted class, count), largest first (ties in
    class order)."""
    n = matrix.shape[0]
    mistakes = [(i, j, int(matrix[i, j])) for i in range(n) for j in range(n) if i != j and matrix[i, j] > 0]
    return sorted(mistakes, key=lambda m: (-m[2], m[0], m[1]))[:k]


def per_class_accuracy(matrix: torch.Tensor) -> list[float]:
    """Return each true class's accuracy in percent."""
    totals = matrix.sum(dim=1).clamp(min=1)
    return (100.0 * matrix.diagonal() / totals).tolist()


def plot_confusion(matrix: torch.Tensor, title: str = "") -> Figure:
    """Return the confusion matrix (mistakes only, counts written in) beside per-class accuracy."""
    fig, (ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    mistakes = matrix.clone().float()
    mistakes.fill_diagonal_(float("nan"))
    ax.imshow(mistakes.numpy(), cmap="Reds")
    n = matrix.shape[0]
    for i in range(n):
        for j in range(n):
            if i != j and matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize="small")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title="mistakes: true class (row) predicted as (column)")
    accuracy = per_class_accuracy(matrix)
    acc_ax.bar(range(n), accuracy, color="tab:blue")
    low = min(accuracy)
    acc_ax.set(xticks=range(n), xlabel="true class", ylabel="accuracy (%)", ylim=(max(90.0, low - 0.5), 100.0),
               title="accuracy per class")
    acc_ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
