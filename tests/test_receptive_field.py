"""Receptive-field table: hand-computed values, textbook stacks, a gradient oracle and torchscan."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn.functional as F
import torchscan
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from torch import nn

from mnist_lesson.models import get_model
from mnist_lesson.plots import plot_receptive_field
from mnist_lesson.receptive_field import (
    LayerRow,
    LayerTable,
    UnsupportedLayerError,
    layer_table,
)

# The seed model, worked out by hand with rf += (k - 1) * jump, jump *= stride, on a 28x28 input:
#   conv1.0.0 3x3 pad 1: 28 -> 28, rf 1 + 2*1 = 3
#   conv1.1.0 3x3 pad 1: 28 -> 28, rf 3 + 2*1 = 5
#   conv1.2.0 3x3 pad 0: 28 -> 26, rf 5 + 2*1 = 7
#   trans1.0  1x1:       26 -> 26, rf 7 (k - 1 = 0)
#   trans1.2  maxpool 2: 26 -> 13, rf 7 + 1*1 = 8, jump 1*2 = 2
#   conv2.0.0 3x3:       13 -> 11, rf 8 + 2*2 = 12
#   conv2.1.0 3x3:       11 -> 9,  rf 12 + 2*2 = 16
#   trans2.0  1x1:        9 -> 9,  rf 16
#   conv3.0.0 3x3:        9 -> 7,  rf 16 + 2*2 = 20
#   conv3.1.0 3x3:        7 -> 5,  rf 20 + 2*2 = 24
#   gap       avgpool 5:  5 -> 1,  rf 24 + 4*2 = 32, jump 2*5 = 10
#   head      1x1 convs:  1 -> 1,  rf 32
SEED_HAND = {  # name: (output channels, output side, rf, jump)
    "conv1.0.0": (8, 28, 3, 1),
    "conv1.1.0": (16, 28, 5, 1),
    "conv1.2.0": (24, 26, 7, 1),
    "trans1.0": (8, 26, 7, 1),
    "trans1.2": (8, 13, 8, 2),
    "conv2.0.0": (16, 11, 12, 2),
    "conv2.1.0": (24, 9, 16, 2),
    "trans2.0": (8, 9, 16, 2),
    "conv3.0.0": (16, 7, 20, 2),
    "conv3.1.0": (16, 5, 24, 2),
    "gap": (16, 1, 32, 10),
    "head.0.0": (16, 1, 32, 10),
    "head.1": (10, 1, 32, 10),
}


@pytest.fixture(scope="module")
def seed_table() -> LayerTable:
    return layer_table(get_model("seed"))


def test_seed_matches_hand_computation(seed_table: LayerTable) -> None:
    rows = {row.name: row for row in seed_table.rows}
    for name, (channels, side, rf, jump) in SEED_HAND.items():
        row = rows[name]
        assert (row.out_shape, row.rf, row.jump) == ((channels, side, side), rf, jump), name
    # 8 conv blocks of 4 leaves (conv, ReLU, BN, Dropout2d), trans1 3, trans2 2, gap, head.1.
    assert len(seed_table.rows) == 39
    assert seed_table.final_rf == 32
    assert seed_table.covers_input
    assert seed_table.first_full_rf_row is not None and seed_table.first_full_rf_row.name == "gap"
    assert seed_table.total_params == 13_816 == sum(row.params for row in seed_table.rows)


def test_seed_geometry_keeping_rows_copy_previous_row(seed_table: LayerTable) -> None:
    for prev, row in zip(seed_table.rows, seed_table.rows[1:], strict=False):
        if row.kind in ("ReLU", "BatchNorm2d", "Dropout2d"):
            assert (row.out_shape, row.rf, row.jump, row.start) == (
                prev.out_shape, prev.rf, prev.jump, prev.start), row.name


def test_seed_text_ends_with_verdict_and_is_deterministic(seed_table: LayerTable) -> None:
    text = seed_table.to_text()
    assert text.splitlines()[-1] == "Final receptive field 32x32 covers the 28x28 input"
    assert str(seed_table) == text
    assert layer_table(get_model("seed")).to_text() == text  # a fresh instance prints the same
    assert re.search(r"0x[0-9a-fA-F]{6,}", text) is None  # no memory addresses
    marked = [line for line in text.splitlines() if "<- RF reaches 28x28" in line]
    assert len(marked) == 1 and " gap " in marked[0]


def test_small_table_text_exactly() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    # conv 3x3: 8 -> 6, rf 3, 2*1*9 + 2 = 20 params; max-pool 2: 6 -> 3, rf 3 + 1 = 4, jump 2.
    expected = "\n".join([
        "#  layer  kind       output  RF  jump  params",
        "0  0      Conv2d     2x6x6    3     1      20",
        "1  1      ReLU       2x6x6    3     1       0",
        "2  2      MaxPool2d  2x3x3    4     2       0",
        "Total parameters: 20",
        "Final receptive field 4x4 does NOT cover the 8x8 input; add layers or a max-pool",
    ])
    table = layer_table(model, input_size=(1, 8, 8))
    assert table.to_text() == expected
    assert not table.covers_input and table.first_full_rf_row is None


def test_html_highlights_first_full_row_only(seed_table: LayerTable) -> None:
    page = seed_table._repr_html_()
    highlighted = [tr for tr in page.split("<tr") if "background-color" in tr]
    assert len(highlighted) == 1 and "<td>gap</td>" in highlighted[0]
    assert "Final receptive field 32x32 covers the 28x28 input" in page
    assert page == layer_table(get_model("seed"))._repr_html_()


def _rows(model: nn.Module, side: int) -> list[LayerRow]:
    return list(layer_table(model, input_size=(1, side, side)).rows)


TEXTBOOK = [
    # Stacked 3x3 convs grow the RF by 2 each: 3, 5, 7.
    ([nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)], [3, 5, 7], [1, 1, 1]),
    # Pool then conv: pool rf 2, jump 2; the 3x3 then adds 2 * 2 = 4 -> 6.
    ([nn.MaxPool2d(2), nn.Conv2d(1, 1, 3)], [2, 6], [2, 2]),
    # Dilations 1, 2, 4 (Yu and Koltun 2016): 3, 3 + 2*2 = 7, 7 + 2*4 = 15.
    ([nn.Conv2d(1, 1, 3, padding=d, dilation=d) for d in (1, 2, 4)], [3, 7, 15], [1, 1, 1]),
    # Stride-2 conv: rf 3, jump 2; the next 3x3 adds 2 * 2 = 4 -> 7.
    ([nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3)], [3, 7], [2, 2]),
    # Global pooling over a 26x26 map: 3 + 25 * 1 = 28, jump 26.
    ([nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(1)], [3, 28], [1, 26]),
    # Adaptive pooling 26 -> 2 is a 13x13 window with stride 13: 3 + 12 = 15.
    ([nn.Conv2d(1, 1, 3), nn.AdaptiveMaxPool2d(2)], [3, 15], [1, 13]),
    # Flatten only reshapes (rf 3); the Linear sees the whole 26x26 map: 3 + 25 = 28.
    ([nn.Conv2d(1, 1, 3), nn.Flatten(), nn.Linear(26 * 26, 10), nn.LogSoftmax(dim=1)], [3, 3, 28, 28],
     [1, 1, 26, 26]),
    # Dilated max-pool: effective kernel 2 * (3 - 1) + 1 = 5.
    ([nn.MaxPool2d(3, stride=1, dilation=2)], [5], [1]),
    # ceil_mode changes the output size, not the RF.
    ([nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(2)], [2, 4], [2, 4]),
]


@pytest.mark.parametrize(("layers", "rfs", "jumps"), TEXTBOOK)
def test_textbook_stacks(layers: list[nn.Module], rfs: list[int], jumps: list[int]) -> None:
    rows = _rows(nn.Sequential(*layers), 28)
    assert [row.rf for row in rows] == rfs
    assert [row.jump for row in rows] == jumps


def test_start_follows_padding() -> None:
    # ZeroPad2d(2) moves the first unit 2 pixels outside: start -2; a 3x3 conv then centres one further in.
    rows = _rows(nn.Sequential(nn.ZeroPad2d(2), nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 5, padding="same")), 28)
    assert [(row.out_shape, row.rf, row.start) for row in rows] == [
        ((1, 32, 32), 1, -2.0), ((1, 30, 30), 3, -1.0), ((1, 30, 30), 7, -1.0)]


def test_ceil_mode_output_shape() -> None:
    assert _rows(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), 27)[0].out_shape == (1, 14, 14)


# --- Independent oracle: the input pixels that a unit's gradient reaches. ---------------------------------

window = st.tuples(
    st.sampled_from(["conv", "max", "avg"]),
    st.integers(1, 5),  # kernel
    st.integers(1, 2),  # stride
    st.integers(1, 2),  # dilation (max-pool and conv only)
    st.integers(0, 2),  # padding
)


def _layer(kind: str, k: int, s: int, d: int, p: int, oracle: bool) -> nn.Module:
    """Return the layer, or for the oracle a conv of the same geometry whose weights are all positive."""
    if kind != "conv":
        k = max(k, 2)
        p = min(p, k // 2)  # PyTorch pools allow at most half the kernel as padding
        d = d if kind == "max" else 1
    if oracle or kind == "conv":
        # A max-pool routes the gradient through one input only, so the oracle sums the window instead.
        conv = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
        nn.init.constant_(conv.weight, 1.0)
        return conv
    if kind == "max":
        return nn.MaxPool2d(k, stride=s, padding=p, dilation=d)
    return nn.AvgPool2d(k, stride=s, padding=p)


@settings(max_examples=35, deadline=None, database=None)
@given(st.lists(window, min_size=1, max_size=4))
def test_rf_equals_gradient_footprint(spec: list[tuple[str, int, int, int, int]]) -> None:
    side = 192  # the largest possible RF here is 1 + 8 * (1 + 2 + 4 + 8) = 121, so it fits unclipped
    model = nn.Sequential(*[_layer(*w, oracle=False) for w in spec]).double()
    oracle = nn.Sequential(*[_layer(*w, oracle=True) for w in spec]).double()
    table = layer_table(model, input_size=(1, side, side))

    x = torch.ones(1, 1, side, side, dtype=torch.float64, requires_grad=True)
    out = oracle(x)
    centre = (out.shape[-1] - 1) // 2
    out[0, 0, centre, centre].backward()
    hit = x.grad[0, 0].nonzero()
    low, high = hit.min(dim=0).values, hit.max(dim=0).values
    assert low.min() > 0 and high.max() < side - 1, "oracle footprint touches the border: enlarge input"
    measured = (high - low + 1).tolist()
    assert measured == [table.final_rf, table.final_rf]
    footprint_centre = ((low + high).double() / 2).tolist()
    last = table.rows[-1]
    assert footprint_centre == [last.start + centre * last.jump] * 2

    # Shapes: run the real layers one at a time, independently of the hooks.
    y = torch.zeros(1, 1, side, side, dtype=torch.float64)
    for layer, row in zip(model, table.rows, strict=True):
        y = layer(y)
        assert row.out_shape == tuple(y.shape[1:])


# --- Second tool: torchscan's per-layer kernel, stride and padding. -------------------------------------

def _torchscan_rows(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, tuple[int, int, float]]:
    """Compose torchscan's per-module (kernel, stride, padding) into cumulative (rf, jump, start).

    torchscan 0.2 reports each leaf's own effective kernel (dilation included), stride and padding, not the
    cumulative field, so the composition here is the textbook recursion; the per-layer geometry is
    torchscan's. It marks Dropout2d "unavailable" instead of giving it a value; dropout keeps geometry.
    """
    report = torchscan.crawl_module(model, input_size)
    rf, jump, start = 1, 1, 0.0
    result = {}
    for layer in report["layers"]:
        metrics = layer["metrics"]
        if "receptive_field" not in metrics:
            continue  # containers
        k, s, p = (metrics[key]["value"] for key in ("receptive_field", "effective_stride",
                                                      "effective_padding"))
        if k is None:
            assert layer["type"].startswith("Dropout"), layer["path"]
            k, s, p = 1, 1, 0
        rf, start, jump = int(rf + (k - 1) * jump), start + ((k - 1) / 2 - p) * jump, int(jump * s)
        result[layer["path"]] = (rf, jump, start)
    return result


def test_seed_agrees_with_torchscan(seed_table: LayerTable) -> None:
    expected = _torchscan_rows(get_model("seed"), (1, 28, 28))
    assert {row.name: (row.rf, row.jump, row.start) for row in seed_table.rows} == expected


def test_strided_dilated_stack_agrees_with_torchscan() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.BatchNorm2d(4), nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 5, padding=2), nn.AdaptiveAvgPool2d(1),
    )
    ours = {row.name: row for row in layer_table(model, input_size=(1, 64, 64)).rows}
    theirs = _torchscan_rows(model, (1, 64, 64))
    assert ours.keys() == theirs.keys()
    for name, (rf, jump, start) in theirs.items():
        assert (ours[name].rf, ours[name].jump) == (rf, jump), name
        # torchscan gives adaptive pools padding (n_in - k * s) / 2, which is no real padding (it is
        # negative for global pooling), so the start of that last row is not comparable.
        if name != "7":
            assert ours[name].start == start, name


# --- What the table refuses, and what it must not disturb. ----------------------------------------------

class Subsample(nn.Module):
    """Keeps every second pixel: changes the geometry without being a known layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


class Scale(nn.Module):
    """Keeps the shape: treated as pointwise, marked as assumed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3)
        self.body = nn.Sequential(nn.ReLU(), inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


@pytest.mark.parametrize(("inner", "kind"), [
    (nn.Upsample(scale_factor=2), "Upsample"),
    (Subsample(), "Subsample"),
    (nn.ConvTranspose2d(2, 2, 3, padding=1), "ConvTranspose2d"),  # keeps 26x26 yet mixes pixels
])
def test_unsupported_layer_names_path_and_class(inner: nn.Module, kind: str) -> None:
    model = Wrapper(inner)
    model.train()
    with pytest.raises(UnsupportedLayerError, match=rf"'body\.1' \({kind}\).*supports Conv2d"):
        layer_table(model)
    # The failed pass still removed its hooks and restored the training mode.
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_assumed_pointwise_module_is_marked() -> None:
    table = layer_table(Wrapper(Scale()))
    assert [(row.name, row.rf, row.assumed) for row in table.rows] == [
        ("stem", 3, False), ("body.0", 3, False), ("body.1", 3, True)]
    assert "Scale*" in table.to_text() and "assumed not to mix pixels" in table.to_text()


class FunctionalPool(nn.Module):
    def __init__(self, pool_at_end: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 2, 3)
        self.pool_at_end = pool_at_end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.pool_at_end:
            x = F.max_pool2d(x, 2)
        x = self.conv2(x)
        return F.max_pool2d(x, 2) if self.pool_at_end else x


def test_functional_op_between_modules_is_reported() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"functional op between 'conv1'.*and 'conv2'"):
        layer_table(FunctionalPool())
    with pytest.raises(UnsupportedLayerError, match=r"functional op between 'conv2'.*the model's output"):
        layer_table(FunctionalPool(pool_at_end=True))


class FunctionalFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(torch.flatten(F.relu(self.conv(x)), 1)), dim=1)


def test_functional_flatten_is_a_reshape() -> None:
    rows = layer_table(FunctionalFlatten()).rows
    assert [(row.name, row.out_shape, row.rf) for row in rows] == [("conv", (2, 26, 26), 3), ("fc", (10,), 28)]


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_module_called_twice_gets_two_rows_and_counts_once() -> None:
    table = layer_table(Shared())
    assert [(row.name, row.rf, row.params) for row in table.rows] == [("conv", 3, 10), ("conv (call 2)", 5, 0)]
    assert table.total_params == 10


@pytest.mark.parametrize(("model", "message"), [
    (nn.Sequential(nn.Conv2d(1, 1, (3, 1))), r"'0' \(Conv2d\): non-square kernel_size \(3, 1\)"),
    (nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(3)), r"26 to 3.*divides"),
    (nn.Sequential(nn.Conv2d(1, 1, 3), nn.Linear(26, 4)), r"'1' \(Linear\).*flatten first"),
])
def test_unsupported_geometry(model: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=message):
        layer_table(model)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        layer_table("seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        layer_table(nn.Conv2d(1, 1, 3), input_size=(1, 28, 32))
    with pytest.raises(ValueError, match="three positive ints"):
        layer_table(nn.Conv2d(1, 1, 3), input_size=(28, 28))  # type: ignore[arg-type]


def test_mixed_modes_are_restored() -> None:
    model = get_model("seed")
    model.train()
    model.conv2.eval()
    before = [m.training for m in model.modules()]
    layer_table(model)
    assert [m.training for m in model.modules()] == before
    assert all(not m._forward_hooks for m in model.modules())


def test_plot_receptive_field(seed_table: LayerTable) -> None:
    fig = plot_receptive_field(seed_table)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [row.name for row in seed_table.rows]
    assert list(ax.lines[0].get_ydata()) == [row.rf for row in seed_table.rows]
    assert any(list(line.get_ydata()) == [28, 28] for line in ax.lines)  # the image-side line
    fig.savefig(io.BytesIO(), format="png")  # renders without a display

    given_fig = Figure()
    given_ax = given_fig.add_subplot()
    assert plot_receptive_field(seed_table, ax=given_ax) is given_fig
