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
from matplotlib.figure import Figure

from mnist_lesson.train import History


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
