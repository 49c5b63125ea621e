"""Seeing inside the network: receptive-field boxes, effective fields, feature maps, errors by class, the
schedule and parameter pictures, and the explorer, each checked on tiny inputs against what it claims."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from matplotlib.patches import Rectangle
from torch import nn

from mnist_lesson.explore import ASSIGNMENT_KNOBS, KnobNet, Knobs, explore, summary_lines
from mnist_lesson.inside import (
    ActivationStats,
    blocks,
    confusion_matrix,
    effective_receptive_field,
    erf_share,
    most_confused,
    per_class_accuracy,
    plot_activation_stats,
    plot_confusion,
    plot_feature_maps,
    plot_rf_on_digit,
    prediction_shares,
    rf_boxes,
    start_figures,
)
from mnist_lesson.receptive_field import layer_table
from mnist_lesson.train import History

matplotlib.use("Agg")


def positive(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.weight, 1.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def test_the_rf_box_lands_on_the_pixels_of_the_closed_form() -> None:
    """Three 3x3 convs around a 2x2 pool: unit i of the last map sees input pixels 2i .. 2i + 9 (by hand), so
    the centre unit (i = 4 of 10) sees pixels 8 .. 17; the input gradient of that unit agrees (an average pool,
    whose gradient reaches every pixel of its window, unlike a max-pool's)."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.AvgPool2d(2), nn.Conv2d(1, 1, 3))
    box = rf_boxes(model)[-1]
    assert (box.rf, box.first, box.last) == (10, 8.0, 17.0)
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    positive(model)(x)[0, 0, 4, 4].backward()
    rows, cols = x.grad[0, 0].abs().sum(1).nonzero().flatten(), x.grad[0, 0].abs().sum(0).nonzero().flatten()
    assert rows.tolist() == cols.tolist() == list(range(8, 18))


def test_the_effective_field_of_one_positive_3x3_conv_is_exactly_3x3() -> None:
    model = positive(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 2, 1)))
    erf = effective_receptive_field(model, torch.rand(5, 1, 9, 9), layer="0")
    assert (erf > 0).nonzero().tolist() == [[r, c] for r in range(3, 6) for c in range(3, 6)]
    box = rf_boxes(model, (1, 9, 9))[-1]
    side, share = erf_share(erf, box, fraction=1.0)
    assert side == 3 and share == 1.0


def test_rf_picture_draws_one_box_per_block_and_the_effective_field() -> None:
    model = KnobNet(Knobs())
    boxes = rf_boxes(model)
    assert [b.rf for b in boxes] == sorted(b.rf for b in boxes) and boxes[-1].rf >= 28
    digit = torch.rand(28, 28)
    fig = plot_rf_on_digit(model, digit, erf=effective_receptive_field(model, digit.reshape(1, 1, 28, 28)))
    drawn = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert [(p.get_width(), p.get_xy()[0]) for p in drawn] == [(b.rf, b.first - 0.5) for b in boxes]
    assert len(fig.axes) == 3  # digit, effective field, its colour bar


def test_feature_maps_show_every_spatial_block() -> None:
    fig = plot_feature_maps(KnobNet(Knobs()), torch.rand(1, 28, 28), channels=3)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled[0] == "input" and all("ch " in t for t in titled[1:])
    spatial = [name for name, _ in blocks(KnobNet(Knobs())) if name.startswith("features.")]
    assert len(titled) == 1 + 3 * len(spatial)


def test_activation_stats_record_training_batches_only() -> None:
    stats = ActivationStats(every=1)
    model = stats.attach(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3)))
    model.train()
    for _ in range(3):
        model(torch.rand(4, 1, 8, 8))
    model.eval()
    model(torch.rand(4, 1, 8, 8))
    assert list(stats.means) == ["0", "2"] and all(len(v) == 3 for v in stats.means.values())
    fig = plot_activation_stats({"plain": stats, "again": stats})
    assert len(fig.axes) == 4 and len(fig.axes[0].get_lines()) == 2


def test_a_model_that_always_says_seven_has_one_nonzero_column() -> None:
    true = torch.arange(100) % 10
    matrix = confusion_matrix(torch.full((100,), 7), true)
    assert matrix.sum().item() == 100 and (matrix.sum(dim=0) > 0).nonzero().flatten().tolist() == [7]
    assert per_class_accuracy(matrix)[7] == 100.0 and per_class_accuracy(matrix)[3] == 0.0
    assert most_confused(matrix, 2) == [(0, 7, 10), (1, 7, 10)]
    fig = plot_confusion(matrix)
    assert len(fig.axes[0].texts) == 9  # one count per wrong cell of column 7


def test_the_schedule_plot_draws_what_the_run_recorded() -> None:
    from mnist_lesson.plots import plot_schedule

    history = History([{"epoch": 1}, {"epoch": 2}], schedule={"step": [1, 2, 3, 4], "lr": [0.1, 0.2, 0.3, 0.05],
                                                              "momentum": [0.95, 0.9, 0.85, 0.95]})
    fig = plot_schedule(history)
    lr_line, momentum_line = fig.axes[0].get_lines()[0], fig.axes[1].get_lines()[0]
    assert list(lr_line.get_ydata()) == [0.1, 0.2, 0.3, 0.05] and list(momentum_line.get_ydata())[2] == 0.85
    with pytest.raises(ValueError, match="recorded no schedule"):
        plot_schedule(History([{"epoch": 1}]))


def test_the_parameter_picture_has_a_bar_per_layer_and_the_budget_line() -> None:
    from mnist_lesson.models import get_model
    from mnist_lesson.plots import plot_params

    model = get_model("assignment")
    fig = plot_params(model, limit=20_000)
    bars = [p for p in fig.axes[0].patches if p.get_height() > 0]
    assert [int(b.get_height()) for b in bars] == [row.params for row in layer_table(model).rows if row.params]
    assert fig.axes[1].get_title() == "total 13,816" and fig.axes[1].get_lines()[0].get_ydata()[0] == 20_000


def test_the_explorer_with_the_assignments_settings_reports_13816(capsys: pytest.CaptureFixture[str],
                                                                   mnist_root: object) -> None:
    assert summary_lines(KnobNet(ASSIGNMENT_KNOBS))[-1] == ("13,816 parameters against fewer than 20,000: under the "
                                                            "budget by 6,184")
    fig = explore(ASSIGNMENT_KNOBS)
    printed = capsys.readouterr().out
    assert "13,816 parameters" in printed and "Final receptive field 32x32 covers the 28x28 input" in printed
    assert fig.axes[0].get_title() == "theoretical receptive field of the centre unit"
    explore(gap=False)
    assert "OVER the budget" in capsys.readouterr().out


def test_the_explorer_builds_ordinary_modules_and_refuses_impossible_knobs() -> None:
    from mnist_lesson.config import UsageError

    model = KnobNet(Knobs(widths=((8, 8), (16,)), pool_after=1, transition=4))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match="pool_after"):
        Knobs(pool_after=5)
    with pytest.raises(UsageError, match="shrinks to nothing"):
        KnobNet(Knobs(widths=((8,) * 14,), padded=0, pool_after=0))


def test_the_assignment_knobs_rebuild_the_assignments_layers() -> None:
    """The explorer's knobs and the registered model describe the same network, layer for layer (the explorer
    pools with AdaptiveAvgPool2d(1), the assignment with AvgPool2d(5) over its 5x5 map: the same window)."""
    from mnist_lesson.models import get_model

    def layers(model: nn.Module) -> list[tuple[str, tuple[int, ...], int, int]]:
        return [(row.kind.replace("Adaptive", ""), row.out_shape, row.rf, row.params)
                for row in layer_table(model).rows]

    assert layers(KnobNet(ASSIGNMENT_KNOBS)) == layers(get_model("assignment"))


def test_how_a_network_starts_reads_a_constant_network_right() -> None:
    class OnlyOnes(torch.nn.Module):  # scores that ignore the image: class 1 always wins
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(10, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores = torch.zeros(len(x), 4) @ self.weight.t() + torch.arange(10.0).eq(1).float()
            return torch.log_softmax(scores, dim=1)

    x, y = torch.zeros(8, 1, 28, 28), torch.tensor([1, 1, 2, 3, 1, 1, 1, 1])
    figures = start_figures(OnlyOnes(), x, y)
    assert figures.same_class == 100.0 and figures.score_spread == 0.0
    assert figures.gradient_ratios == {"weight": 0.0}  # the scores do not depend on the weight here
    predicted, true = prediction_shares(OnlyOnes(), [(x, y)])
    assert predicted[1].item() == 100.0 and true[1].item() == 75.0 and true[2].item() == 12.5
