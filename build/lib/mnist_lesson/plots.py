"""Figures for the notebooks: training curves from a History, and grids of digits.

Every function returns a matplotlib Figure that pyplot no longer tracks (closed before it is returned):
a notebook shows it once, as the value of the cell; a script saves it with fig.savefig(); and figures
never pile up in pyplot's list of open ones. Introduced in notebook 00.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mnist_lesson.config import BUDGET, TARGET
from mnist_lesson.receptive_field import LayerTable
from mnist_lesson.results import RunSummary, SeedsSummary
from mnist_lesson.train import History

Anchor = tuple[str, int, float, str]  # (label, parameters, test accuracy, where it is published)


def plot_history(histories: History | Mapping[str, History], title: str = "") -> Figure:
    """Return a figure of loss and accuracy per epoch (train dashed, test solid) for one or more runs."""
    runs = {"": histories} if isinstance(histories, History) else dict(histories)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in runs.items():
        epochs = history.column("epoch")
        prefix = f"{label} " if label else ""
        line = loss_ax.plot(epochs, history.column("test_loss"), label=f"{prefix}test")[0]
        loss_ax.plot(epochs, history.column("train_loss"), "--", color=line.get_color(), label=f"{prefix}train")
        acc_ax.plot(epochs, history.column("test_acc"), color=line.get_color(), label=f"{prefix}test")
        acc_ax.plot(epochs, history.column("train_acc"), "--", color=line.get_color(), label=f"{prefix}train")
    loss_ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def show_digits(images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                predictions: Sequence[int] | torch.Tensor | None = None, ncols: int = 10) -> Figure:
    """Return a grid of digits titled with their label (and prediction, when given)."""
    images = images.detach().cpu().reshape(len(images), *images.shape[-2:])
    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.0, nrows * 1.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i], cmap="gray_r")
        title = f"{int(labels[i])}" if predictions is None else f"true {int(labels[i])}\npred {int(predictions[i])}"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_receptive_field(table: LayerTable, ax: Axes | None = None) -> Figure:
    """Return a figure of receptive field and output side per layer against the image side (notebook 02)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(table.rows)), 4.5), layout="constrained")
        plt.close(fig)
    else:
        fig = ax.figure.figure  # the root Figure, also when ax sits in a SubFigure
    x = list(range(len(table.rows)))
    sides = [row.out_shape[-1] if len(row.out_shape) == 3 else float("nan") for row in table.rows]
    ax.plot(x, [row.rf for row in table.rows], marker="o", label="receptive field (input pixels)")
    ax.plot(x, sides, marker=".", linestyle="--", label="output side (units)")
    ax.axhline(table.image_side, color="grey", linewidth=1,
               label=f"image side ({table.image_side})")
    ax.set_xticks(x, [row.name for row in table.rows], rotation=90, fontsize="small")
    ax.set_ylabel("side")
    ax.set_title(table.verdict())
    ax.legend(loc="best")
    return fig


def plot_generalization_gap(histories: Mapping[str, History]) -> Figure:
    """Return a figure of train minus test accuracy per epoch for each run (notebook 05)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, history in histories.items():
        pairs = zip(history.column("train_acc"), history.column("test_acc"), strict=True)
        gap = [train - test for train, test in pairs]
        ax.plot(history.column("epoch"), gap, marker="o", label=label)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set(xlabel="epoch", ylabel="train acc - test acc (points)", title="generalization gap")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def _draw_anchors(ax: Axes, anchors: Sequence[Anchor]) -> None:
    """Draw results from elsewhere (results.PUBLIC_ANCHORS) as grey markers, and the target as a red line."""
    markers = "xP*D^v"
    for (label, params, accuracy, _), marker in zip(anchors, markers, strict=False):
        ax.scatter(params, accuracy, marker=marker, color="grey", label=f"{label}: {params:,}, best epoch")
    ax.axhline(TARGET, color="tab:red", linewidth=1, label=f"{TARGET:.1f}% target")


def plot_params_vs_accuracy(summaries: Sequence[RunSummary], anchors: Sequence[Anchor] = ()) -> Figure:
    """Return a log-x scatter of parameters against the lowest of the last epochs' test accuracy (notebook 07).

    `anchors` are results from elsewhere (results.PUBLIC_ANCHORS), drawn as grey markers.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, summary in enumerate(summaries):
        ax.scatter(summary.params, summary.last_min, color="tab:blue")
        # Alternate label offsets so neighbouring steps of similar size stay readable.
        ax.annotate(summary.model, (summary.params, summary.last_min), textcoords="offset points",
                    xytext=(6, 6 if i % 2 else -12), fontsize="small")
    _draw_anchors(ax, anchors)
    ax.axvline(BUDGET, color="tab:orange", linewidth=1, linestyle="--", label=f"{BUDGET:,} parameters")
    ax.set(xscale="log", xlabel="parameters", ylabel="lowest test accuracy of the last 3 epochs (%)",
           title="accuracy against size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center right", fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_ladder(rungs: Sequence[SeedsSummary], anchors: Sequence[Anchor] = ()) -> Figure:
    """Return a log-x plot of multi-seed results against parameters, with public anchors (notebook 08).

    Each rung is a vertical bar from its worst to its best seed (each seed's figure is the lowest of its
    last epochs) with a dot at the worst seed, the figure a claim rests on; `anchors` are best-epoch results
    from elsewhere (results.PUBLIC_ANCHORS), drawn as grey markers.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, rung in enumerate(rungs):
        lows = list(rung.seed_mins.values())
        color = "tab:green" if rung.holds else "tab:red"
        ax.vlines(rung.params, min(lows), max(lows), color=color, linewidth=3, alpha=0.5)
        ax.scatter(rung.params, min(lows), color=color, zorder=3)
        ax.annotate(f"{rung.model} ({rung.passing}/{len(lows)} seeds)", (rung.params, min(lows)),
                    textcoords="offset points", xytext=(6, 6 if i % 2 else -12), fontsize="small")
    _draw_anchors(ax, anchors)
    ax.set(xscale="log", xlabel="parameters",
           ylabel="lowest test accuracy of the last 3 epochs (%)",
           title="the parameter ladder: every seed, last epochs (bar: worst to best seed)")
    thousands = FuncFormatter(lambda value, _: f"{value:,.0f}")
    ax.xaxis.set_major_formatter(thousands)
    ax.xaxis.set_minor_formatter(thousands)
    ax.tick_params(axis="x", which="minor", labelsize="x-small")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig
