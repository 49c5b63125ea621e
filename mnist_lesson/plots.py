"""Figures for the notebooks: training curves and the schedule from a History, digits, results against size.

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
from torch import nn

from mnist_lesson.budget import KINDS, count_parameters, layer_kind
from mnist_lesson.config import BUDGET, TARGET
from mnist_lesson.receptive_field import LayerTable, layer_table
from mnist_lesson.records import RunSummary, SeedsSummary
from mnist_lesson.studies import DesignSummary
from mnist_lesson.train import History

Anchor = tuple[str, int, float, str]  # (label, parameters, test accuracy, where it is published)


def plot_history(histories: History | Mapping[str, History], title: str = "") -> Figure:
    """Return loss and error per epoch for one or more runs: train (running) dashed, evaluated sets solid.

    Error is 100 - accuracy, on a log axis, so the differences between 1% and 0.5% that matter here show.
    """
    runs = {"": histories} if isinstance(histories, History) else dict(histories)
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"test": "-", "val": "-.", "train_eval": ":"}
    for label, history in runs.items():
        epochs = history.column("epoch")
        prefix = f"{label} " if label else ""
        color = None
        for name, style in styles.items():
            if history.epochs and f"{name}_acc" in history.epochs[0]:
                line = loss_ax.plot(epochs, history.column(f"{name}_loss"), style, color=color,
                                    label=f"{prefix}{name}")[0]
                color = line.get_color()
                err_ax.plot(epochs, [100 - a for a in history.column(f"{name}_acc")], style, color=color,
                            label=f"{prefix}{name}")
        loss_ax.plot(epochs, history.column("train_loss"), "--", color=color, label=f"{prefix}train (running)")
        err_ax.plot(epochs, [100 - a for a in history.column("train_acc")], "--", color=color,
                    label=f"{prefix}train (running)")
    loss_ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    err_ax.set(xlabel="epoch", ylabel="error = 100 - accuracy (%), log scale", yscale="log", title="error")
    err_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_schedule(history: History, title: str = "") -> Figure:
    """Return the learning rate and momentum of every recorded step of a run, as it recorded them (notebook 07)."""
    if not history.schedule.get("step"):
        raise ValueError("this history recorded no schedule (it was saved before schedules were recorded)")
    fig, lr_ax = plt.subplots(figsize=(8, 4))
    steps = history.schedule["step"]
    lr_ax.plot(steps, history.schedule["lr"], color="tab:blue", label="learning rate")
    lr_ax.set(xlabel="training step (batch)", ylabel="learning rate", title=title or "the schedule, step by step")
    momentum = [m if m is not None else float("nan") for m in history.schedule["momentum"]]
    mom_ax = lr_ax.twinx()
    mom_ax.plot(steps, momentum, color="tab:orange", label="momentum")
    mom_ax.set_ylabel("momentum")
    per_epoch = max(1, len(history.epochs) and steps[-1] // len(history.epochs))
    for epoch in range(1, len(history.epochs)):
        lr_ax.axvline(epoch * per_epoch, color="grey", linewidth=0.5, alpha=0.4)
    lines = lr_ax.get_lines()[:1] + mom_ax.get_lines()
    lr_ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_params(model: nn.Module, limit: int = BUDGET, title: str = "") -> Figure:
    """Return one bar per layer with parameters, coloured by kind, against the parameter budget (notebooks 01, 08)."""
    rows = [row for row in layer_table(model).rows if row.params]
    kinds = [layer_kind(dict(model.named_modules())[row.name.split(" (call")[0]]) for row in rows]
    palette = {kind: plt.get_cmap("tab10")(i) for i, kind in enumerate(dict.fromkeys([*KINDS, *kinds]))}
    fig, (bar_ax, total_ax) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    x = range(len(rows))
    bar_ax.bar(x, [row.params for row in rows], color=[palette[k] for k in kinds])
    bar_ax.set_xticks(list(x), [row.name for row in rows], rotation=90, fontsize="small")
    bar_ax.set(ylabel="parameters", title=title or "parameters per layer")
    bar_ax.grid(alpha=0.3, axis="y")
    for kind in dict.fromkeys(kinds):
        bar_ax.bar(0, 0, color=palette[kind], label=kind)
    bar_ax.legend(fontsize="small")
    total = count_parameters(model)
    bottom = 0
    for kind in dict.fromkeys(kinds):
        share = sum(row.params for row, k in zip(rows, kinds, strict=True) if k == kind)
        total_ax.bar(0, share, bottom=bottom, color=palette[kind])
        bottom += share
    total_ax.axhline(limit, color="tab:red", linestyle="--", label=f"budget: fewer than {limit:,}")
    total_ax.set(xticks=[], title=f"total {total:,}", ylim=(0, max(limit, total) * 1.1))
    total_ax.legend(fontsize="small", loc="upper center")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_study(summaries: Sequence[DesignSummary], title: str = "") -> Figure:
    """Return each design's validation figure per seed (dots) and mean (bar), zoomed to where they differ."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(summaries)), 4.5))
    for i, s in enumerate(summaries):
        ax.hlines(s.mean, i - 0.3, i + 0.3, color="tab:blue", linewidth=2)
        ax.scatter([i] * s.seeds, list(s.figures.values()), color="tab:blue", alpha=0.6, zorder=3)
    values = [v for s in summaries for v in s.figures.values()]
    pad = max(0.05, 0.1 * (max(values) - min(values)))
    ax.set_ylim(min(values) - pad, max(values) + pad)
    ax.set_xticks(range(len(summaries)), [s.label for s in summaries], rotation=25, ha="right", fontsize="small")
    ax.set(ylabel="validation accuracy (%), mean of the last epochs", title=title or "designs over seeds")
    ax.grid(alpha=0.3, axis="y")
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
        ax.imshow(images[i].numpy(), cmap="gray_r")
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
    """Return training minus validation accuracy per epoch, two ways: the running accuracy of the training batches
    (augmented, dropout on, weights still changing) and the accuracy on a fixed training subset in eval mode
    (the model as it is tested), for each run (notebook 05)."""
    fig, (running_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, history in histories.items():
        epochs, val = history.column("epoch"), history.column("val_acc")
        line = running_ax.plot(epochs, [a - v for a, v in zip(history.column("train_acc"), val, strict=True)],
                                marker="o", label=label)[0]
        eval_ax.plot(epochs, [a - v for a, v in zip(history.column("train_eval_acc"), val, strict=True)],
                     marker="o", color=line.get_color(), label=label)
    running_ax.set(xlabel="epoch", ylabel="training minus validation accuracy (points)",
                   title="running, over the training batches (train mode)")
    eval_ax.set(xlabel="epoch", title="a fixed training subset in eval mode")
    for ax in (running_ax, eval_ax):
        ax.axhline(0, color="grey", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig


def _draw_anchors(ax: Axes, anchors: Sequence[Anchor]) -> None:
    """Draw results from elsewhere (records.PUBLIC_ANCHORS) as grey markers, and the target as a red line."""
    markers = "xP*D^v"
    for (label, params, accuracy, _), marker in zip(anchors, markers, strict=False):
        ax.scatter(params, accuracy, marker=marker, color="grey", label=f"{label}: {params:,}, best epoch")
    ax.axhline(TARGET, color="tab:red", linewidth=1, label=f"{TARGET:.1f}% target")


def plot_params_vs_accuracy(summaries: Sequence[RunSummary], anchors: Sequence[Anchor] = ()) -> Figure:
    """Return a log-x scatter of parameters against the lowest of the last epochs' test accuracy (notebook 07).

    `anchors` are results from elsewhere (records.PUBLIC_ANCHORS), drawn as grey markers.
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
    from elsewhere (records.PUBLIC_ANCHORS), drawn as grey markers.
    """
    fig, ax = plt.subplots(figsize=(11, 5))
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
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # outside: no label hides behind it
    fig.tight_layout()
    plt.close(fig)
    return fig
