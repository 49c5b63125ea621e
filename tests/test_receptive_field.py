"""Receptive-field table: hand-computed values, textbook stacks, a gradient oracle, torchscan, and refusals.

Models whose data flow is not a single chain of layers (branches, skip connections, functional pooling)
must raise UnsupportedLayerError; harmless functional ops between layers must leave the table unchanged.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchscan
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from torch import nn

from mnist_lesson.models import MODELS, get_model
from mnist_lesson.plots import plot_receptive_field
from mnist_lesson.receptive_field import (
    LayerRow,
    LayerTable,
    UnsupportedLayerError,
    layer_table,
)

# The assignment's original model, worked out by hand with rf += (k - 1) * jump, jump *= stride, on a 28x28 input:
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
ASSIGNMENT_HAND = {  # name: (output channels, output side, rf, jump)
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
def assignment_table() -> LayerTable:
    return layer_table(get_model("assignment"))


def test_assignment_matches_hand_computation(assignment_table: LayerTable) -> None:
    rows = {row.name: row for row in assignment_table.rows}
    for name, (channels, side, rf, jump) in ASSIGNMENT_HAND.items():
        row = rows[name]
        assert (row.out_shape, row.rf, row.jump) == ((channels, side, side), rf, jump), name
    # 8 conv blocks of 4 leaves (conv, ReLU, BN, Dropout2d), trans1 3, trans2 2, gap, head.1.
    assert len(assignment_table.rows) == 39
    assert assignment_table.final_rf == 32
    assert assignment_table.covers_input
    marked = [line for line in assignment_table.to_text().splitlines() if "<- RF reaches 28x28" in line]
    assert len(marked) == 1 and " gap " in marked[0]
    assert assignment_table.total_params == 13_816 == sum(row.params for row in assignment_table.rows)


def test_assignment_geometry_keeping_rows_copy_previous_row(assignment_table: LayerTable) -> None:
    for prev, row in zip(assignment_table.rows, assignment_table.rows[1:], strict=False):
        if row.kind in ("ReLU", "BatchNorm2d", "Dropout2d"):
            assert (row.out_shape, row.rf, row.jump, row.start) == (
                prev.out_shape, prev.rf, prev.jump, prev.start), row.name


def test_assignment_text_ends_with_verdict_and_is_deterministic(assignment_table: LayerTable) -> None:
    text = assignment_table.to_text()
    assert text.splitlines()[-1] == "Final receptive field 32x32 covers the 28x28 input"
    assert str(assignment_table) == text
    assert layer_table(get_model("assignment")).to_text() == text  # a fresh instance prints the same
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
    assert not table.covers_input and "<- RF reaches" not in table.to_text()


def test_html_highlights_first_full_row_only(assignment_table: LayerTable) -> None:
    page = assignment_table._repr_html_()
    highlighted = [tr for tr in page.split("<tr") if "background-color" in tr]
    assert len(highlighted) == 1 and "<td>gap</td>" in highlighted[0]
    assert "Final receptive field 32x32 covers the 28x28 input" in page
    assert page == layer_table(get_model("assignment"))._repr_html_()


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


def test_assignment_agrees_with_torchscan(assignment_table: LayerTable) -> None:
    expected = _torchscan_rows(get_model("assignment"), (1, 28, 28))
    assert {row.name: (row.rf, row.jump, row.start) for row in assignment_table.rows} == expected


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
        layer_table("assignment")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        layer_table(nn.Conv2d(1, 1, 3), input_size=(1, 28, 32))
    with pytest.raises(ValueError, match="three positive ints"):
        layer_table(nn.Conv2d(1, 1, 3), input_size=(28, 28))  # type: ignore[arg-type]


def test_mixed_modes_are_restored() -> None:
    model = get_model("assignment")
    model.train()
    model.conv2.eval()
    before = [m.training for m in model.modules()]
    layer_table(model)
    assert [m.training for m in model.modules()] == before
    assert all(not m._forward_hooks for m in model.modules())


def test_plot_receptive_field(assignment_table: LayerTable) -> None:
    fig = plot_receptive_field(assignment_table)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [row.name for row in assignment_table.rows]
    assert list(ax.lines[0].get_ydata()) == [row.rf for row in assignment_table.rows]
    assert any(list(line.get_ydata()) == [28, 28] for line in ax.lines)  # the image-side line
    fig.savefig(io.BytesIO(), format="png")  # renders without a display

    given_fig = Figure()
    given_ax = given_fig.add_subplot()
    assert plot_receptive_field(assignment_table, ax=given_ax) is given_fig


# --- Data flow the table cannot follow is refused, never reported wrong. --------------------------------
# For each refused model the gradient oracle below measures the true field, and a Sequential of the same leaf
# modules shows what the table said before it followed the data flow: it chained every leaf it saw run.

def _positive(model: nn.Module) -> nn.Module:
    """Return the model in float64 eval mode with positive weights and zero biases, so gradients cannot cancel."""
    generator = torch.Generator().manual_seed(0)
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.uniform_(0.5, 1.5, generator=generator)
    return model


def _footprint(model: nn.Module, side: int, channels: int = 1) -> tuple[int, int, int]:
    """Return (side, first, last) of the input square the centre output unit's gradient reaches (all channels).

    For a flat output the unit is the first feature. Both axes must agree, since every model here is square.
    """
    model = _positive(model)
    x = torch.ones(1, channels, side, side, dtype=torch.float64, requires_grad=True)
    out = model(x)
    if out.dim() == 4:
        centre = (out.shape[-1] - 1) // 2
        out[0, :, centre, centre].sum().backward()
    else:
        out[0, 0].backward()
    hit = x.grad[0].abs().sum(dim=0).nonzero()
    low, high = hit.min(dim=0).values.tolist(), hit.max(dim=0).values.tolist()
    assert low[0] == low[1] and high[0] == high[1], (low, high)
    return high[0] - low[0] + 1, low[0], high[0]


class SumBranches(nn.Module):
    """A 3x3 and a 5x5 branch added: the true field is 5, a chain of both would be 7."""

    def __init__(self) -> None:
        super().__init__()
        self.b3 = nn.Conv2d(1, 1, 3, padding=1)
        self.b5 = nn.Conv2d(1, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b3(x) + self.b5(x)

    def chain(self) -> nn.Module:
        return nn.Sequential(self.b3, self.b5)


class CatBranches(SumBranches):
    """The same branches concatenated: field 5, and 2 output channels where a chain of both gives 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b5(x)], 1)


class Residual(nn.Module):
    """x + conv(x): its largest field equals the conv's, yet the table cannot know that without following it."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            y = self.conv(x)
            y += x
            return y
        return x + self.conv(x)

    def chain(self) -> nn.Module:
        return nn.Sequential(self.conv)


class EightBranches(nn.Module):
    """Eight parallel 3x3 convs summed: field 3, which a chain of eight would call 17."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=1) for _ in range(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)  # type: ignore[return-value]

    def chain(self) -> nn.Module:
        return nn.Sequential(*self.branches)


class SharedTwice(nn.Module):
    """One conv applied twice to the same tensor and summed: two branches (field 3), not conv(conv(x)) (5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv(x)

    def chain(self) -> nn.Module:
        return nn.Sequential(self.conv, self.conv)


class SizeKeepingPool(nn.Module):
    """conv, a functional 3x3 stride-1 pool that keeps 28x28, conv: field 7; the two convs alone give 5."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool2d if self.pool == "avg" else F.max_pool2d
        return self.conv2(pool(self.conv1(x), 3, stride=1, padding=1))

    def chain(self) -> nn.Module:
        return nn.Sequential(self.conv1, self.conv2)


ADVICE = r".*single chain of nn\.Module layers"
REFUSED = [
    # (model, message, the field a chain of its leaves gives, the true field or None where it is the same)
    (SumBranches(), r"layer 'b5' \(Conv2d\) takes the model's input, but the layer that ran just before it was "
                    r"'b3': the model has parallel branches", 7, 5),
    (CatBranches(), r"layer 'b5' \(Conv2d\) takes the model's input, but .* 'b3'", 7, 5),
    (Residual(), r"'add' combines the model's input and the output of 'conv'", 3, None),
    (Residual(inplace=True), r"'add_' combines the model's input and the output of 'conv'", 3, None),
    (EightBranches(), r"layer 'branches\.1' \(Conv2d\) takes the model's input, .* 'branches\.0'", 17, 3),
    (SharedTwice(), r"layer 'conv \(call 2\)' \(Conv2d\) takes the model's input, .* was 'conv'", 5, 3),
    (SizeKeepingPool("avg"), r"functional op between 'conv1' and 'conv2' \(avg_pool2d, called outside any "
                             r"nn\.Module\).*use nn\.AvgPool2d instead of F\.avg_pool2d", 5, 7),
    (SizeKeepingPool("max"), r"functional op between 'conv1' and 'conv2' \(max_pool2d.*nn\.MaxPool2d instead of "
                             r"F\.max_pool2d", 5, 7),
]


@pytest.mark.parametrize(("model", "message", "chained", "true_rf"), REFUSED,
                         ids=["sum", "cat", "residual", "residual-inplace", "eight", "shared-twice", "avg-pool",
                              "max-pool"])
def test_non_chain_models_are_refused(model: nn.Module, message: str, chained: int, true_rf: int | None) -> None:
    model.train()
    with pytest.raises(UnsupportedLayerError, match=message + ADVICE):
        layer_table(model)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    # What the table used to print: the leaves chained in the order they ran.
    assert layer_table(model.chain()).final_rf == chained
    if true_rf is not None:
        # The oracle takes the average for the max-pool: a max routes the gradient to one pixel per window.
        oracle = SizeKeepingPool("avg") if isinstance(model, SizeKeepingPool) else model
        assert _footprint(oracle, 28)[0] == true_rf != chained


def test_concatenation_would_also_have_reported_the_wrong_output_shape() -> None:
    model = CatBranches()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 28, 28))
    assert tuple(out.shape[1:]) == (2, 28, 28)
    assert layer_table(model.chain()).rows[-1].out_shape == (1, 28, 28)  # what the last traced leaf gave


def test_eight_branches_no_longer_earn_the_rf_exercise_point() -> None:
    from mnist_lesson.grading.exercises import ex02

    result = ex02.grade(EightBranches())
    assert not result.passed and result.points == 0
    assert "cannot read your model" in result.message and "'branches.1'" in result.message


class Between(nn.Module):
    """conv1, then a functional op given as `op`, then conv2 (dilated): with a harmless op, fields 3 and 7."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.op(self.conv1(x)))


HARMLESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F.relu": F.relu,
    "F.relu-inplace": lambda x: F.relu(x, inplace=True),
    "relu_": lambda x: x.relu_(),
    "times-2.0": lambda x: x * 2.0,
    "2-times": lambda x: 2 * x,
    "plus-1-over-2": lambda x: (x + 1) / 2,
    "sigmoid-tanh-gelu": lambda x: F.gelu(torch.tanh(torch.sigmoid(x))),
    "swish": lambda x: x * torch.sigmoid(x),  # two tensors, both from conv1: still pointwise
    "dropout2d-eval": lambda x: F.dropout2d(x, 0.1, training=False),
    "flatten-and-back": lambda x: x.flatten(1).view(x.shape).contiguous().float().type_as(x),
    "clamp-scale-param": lambda x: x.clamp(min=0) * torch.ones(1, 2, 1, 1, dtype=x.dtype),
    "channel-log-softmax": lambda x: torch.log_softmax(x, dim=1).exp(),
}


@pytest.mark.parametrize("op", HARMLESS.values(), ids=HARMLESS.keys())
def test_harmless_functional_ops_keep_the_table(op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    model = Between(op)
    table = layer_table(model, input_size=(1, 32, 32))
    plain = layer_table(nn.Sequential(model.conv1, model.conv2), input_size=(1, 32, 32))
    strip = [(row.out_shape, row.rf, row.jump, row.start) for row in plain.rows]
    assert [row.name for row in table.rows] == ["conv1", "conv2"]
    assert [(row.out_shape, row.rf, row.jump, row.start) for row in table.rows] == strip
    rf, low, high = _footprint(model, 32)
    assert rf == table.final_rf == 7
    assert (low + high) / 2 == table.rows[-1].start + 14 * table.rows[-1].jump  # the centre of a 30x30 output


class FlatHead(nn.Module):
    """Stride-3 conv, in-place relu, 2x2 conv to a 1x1 map, x.flatten(1), Linear, log_softmax over dim 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=3)
        self.conv2 = nn.Conv2d(4, 6, 2)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x).relu_())
        return torch.log_softmax(self.fc(F.relu(x).flatten(1)), dim=1)


def test_flatten_linear_and_log_softmax_agree_with_the_oracle() -> None:
    # 8x8 input: conv1 rf 3, jump 3, side 2; conv2 rf 3 + 1 * 3 = 6 on a 1x1 map; the Linear then adds nothing.
    # The field covers pixels 0..5 of 8, so the oracle can tell it from the whole image.
    table = layer_table(FlatHead(), input_size=(1, 8, 8))
    assert [(row.name, row.out_shape, row.rf, row.start) for row in table.rows] == [
        ("conv1", (4, 2, 2), 3, 1.0), ("conv2", (6, 1, 1), 6, 2.5), ("fc", (10,), 6, 2.5)]
    assert _footprint(FlatHead(), 8) == (6, 0, 5)


def test_flatten_then_linear_sees_the_whole_map() -> None:
    # FunctionalFlatten: conv 3x3 on 28x28 gives 26x26; the Linear sees it all, 3 + 25 = 28, the whole image.
    table = layer_table(FunctionalFlatten())
    assert table.final_rf == 28 == _footprint(FunctionalFlatten(), 28)[0]


@pytest.mark.parametrize(("op", "message"), [
    (lambda x: F.conv2d(x, torch.ones(2, 2, 3, 3, dtype=x.dtype), padding=1), r"conv2d.*nn\.Conv2d instead of"),
    (lambda x: F.pad(x, (1, 1, 1, 1)), r"pad.*nn\.ZeroPad2d"),
    (lambda x: F.interpolate(x, scale_factor=2), r"interpolate.*is not one the table knows"),
    (lambda x: x.transpose(2, 3), r"transpose"),
    (lambda x: x[:, :, ::2, ::2], r"__getitem__"),
    (lambda x: x - x.mean((2, 3), keepdim=True), r"mean.*nn\.AdaptiveAvgPool2d\(1\)"),
    (lambda x: torch.cat([x, x], 1)[:, :2], r"cat"),  # one tensor twice: not a branch, but an unknown op
    (lambda x: x * torch.ones(2, 1, 1, 1, dtype=x.dtype), r"mul, .* broadcasts the output of 'conv1' to"),
    (lambda x: F.softmax(x, dim=-1), r"softmax, .* over dim=-1"),
])
def test_other_functional_ops_between_layers_are_refused(op: Callable[[torch.Tensor], torch.Tensor],
                                                         message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=r"functional op between 'conv1' and 'conv2' \(" + message):
        layer_table(Between(op))


class SoftmaxOverMap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.conv(x).flatten(1), dim=1)


def test_functional_softmax_over_a_flattened_map_is_refused() -> None:
    # It mixes the whole 26x26 map, like a Linear would, but a functional op gets no row to show it.
    with pytest.raises(UnsupportedLayerError, match=r"log_softmax over the flattened features of the 26x26 map "
                                                    r"after 'conv'.*nn\.LogSoftmax\(dim=1\)"):
        layer_table(SoftmaxOverMap())


class TwoInputLeaf(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class MergedInLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
        self.merge = TwoInputLeaf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.merge(self.conv2(y), y)


class SwallowsErrors(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        try:
            y = y + self.conv2(x)
        except Exception:  # the table must still refuse the model
            pass
        return y


class ReturnsEarlier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        self.conv2(y)
        return y


class IgnoresInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.ones_like(x))


@pytest.mark.parametrize(("model", "message"), [
    (MergedInLeaf(), r"layer 'merge' \(TwoInputLeaf\) takes the output of 'conv1' and the output of 'conv2' at "
                     r"once"),
    (SwallowsErrors(), r"layer 'conv2' \(Conv2d\) takes the model's input"),
    (ReturnsEarlier(), r"the model returns the output of 'conv1', but the last layer to run was 'conv2'"),
    (IgnoresInput(), r"layer 'conv' \(Conv2d\) does not take a tensor computed from the model's input"),
])
def test_other_non_chain_flows_are_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=message):
        layer_table(model)


def test_registered_models_are_chains_with_the_right_output_shape() -> None:
    assert MODELS
    for name, build in MODELS.items():
        model = build()
        table = layer_table(model)
        assert table.rows and table.covers_input, name
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 1, 28, 28))
        last = table.rows[-1].out_shape
        # The models end with a flatten (a reshape) at most: same number of values as the last row.
        assert torch.Size(last).numel() == out[0].numel(), name
