"""Layer-by-layer output shapes and receptive fields of a model, measured with one dummy forward pass.

The receptive field (RF) follows the recursion of Araujo, Norris and Sim, "Computing Receptive Fields of
Convolutional Neural Networks", Distill 2019 (https://distill.pub/2019/computing-receptive-fields/).
For a layer with kernel k, stride s, padding p and dilation d, seen from the input of the network:

    k_eff     = d * (k - 1) + 1
    rf_out    = rf_in + (k_eff - 1) * jump_in
    jump_out  = jump_in * s
    start_out = start_in + ((k_eff - 1) / 2 - p) * jump_in

`jump` is the distance in input pixels between two neighbouring output units and `start` is the centre of
the first output unit's field, with input pixel centres at 0, 1, 2, ... (negative: it hangs over the
padding). The table tracks one axis, so it needs square inputs and square kernels, strides and padding.

Conventions this module adds, because the paper only covers sliding windows:
- Layers that keep height and width (activations, normalization, dropout, Identity) keep the RF.
  Normalization statistics pool over the map, but like the paper we follow the weighted sums only.
- Global or adaptive pooling is a window with kernel = stride = input side / output side.
- Flatten only reshapes, so it keeps the RF; the Linear (or softmax) that then mixes all features sees
  the whole last feature map, as a kernel as large as that map would: rf + (side - 1) * jump.
- An unknown leaf module that keeps height and width is assumed pointwise, and marked with * in the table.
  What a leaf module does inside its own forward is its business: the table reads only its geometry.
- A module called twice (shared weights) gets one row per call; its parameters are counted once.
  `conv(conv(x))` is a chain; two calls on the same tensor (`conv(x) + conv(x)`) are two branches.

The network must be a single chain of leaf modules, each taking the output of the one that ran just
before it. During the pass a torch function mode (dataflow.py) watches every torch call made outside
the leaf modules (in the forward of containers and of the model) and follows which layer's output each
tensor derives from. Between two layers, and after the last one, these functional ops are allowed:
- reshapes: flatten, unflatten, view, reshape, squeeze, unsqueeze, contiguous; a reshape must leave
  a (C, H, W) map with the same height and width, or flat features (checked at the next layer and
  at a 2D or 4D model output);
- conversions: to, type, float, double, half, detach, clone, .data;
- queries that return no tensor: size, shape, dim, numel, item, printing;
- elementwise ops on one layer's output, in place or not: activations (F.relu, relu_, torch.sigmoid,
  tanh, F.gelu, ...), dropout, arithmetic (`x * 2.0`, `x += 1`), comparisons and clamping, with Python
  numbers, with constant tensors (not computed from the input), or with another tensor derived from
  the same layer's output (`x * torch.sigmoid(x)`), as long as the result keeps the data's shape;
- softmax, log_softmax and softmin over the channels of a (C, H, W) map, or over flat features once
  they come from a 1x1 map or a Linear (`torch.log_softmax(x.flatten(1), dim=1)` after a 1x1 head);
- new constant tensors shaped like the data (zeros_like, new_zeros, ...).
Everything else raises UnsupportedLayerError, naming the layers or the op:
- a layer taking a tensor other than the previous layer's output (parallel branches, a skip
  connection, a module called twice on the same tensor), several such tensors at once, or no tensor
  computed from the input at all;
- an op combining tensors derived from two different layers: `a + b`, torch.cat, torch.stack, ...;
- functional pooling, convolution, padding or resampling (F.avg_pool2d, F.max_pool2d, F.conv2d,
  F.pad, F.interpolate): use the module (nn.AvgPool2d, nn.MaxPool2d, ...) so the table gets a row;
- any other op that makes a tensor from the data flow (indexing, transpose, reductions, ...);
- a model whose output is not derived from the last layer that ran.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.modules import activation
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from mnist_lesson.budget import count_parameters
from mnist_lesson.dataflow import CHAIN_ADVICE, SOFTMAX_MODULES, LayerCall, UnsupportedLayerError, trace_forward
from mnist_lesson.device import model_device

SUPPORTED = (
    "supports Conv2d, MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, 2D padding "
    "layers, Flatten, Linear after Flatten, and layers that keep height and width (activations, "
    "normalization, dropout, Identity)"
)
_WINDOWS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PADDING = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
_SOFTMAX = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
_ACTIVATIONS = tuple(
    cls
    for cls in vars(activation).values()
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == activation.__name__
    and cls is not nn.MultiheadAttention and cls not in _SOFTMAX
)
_POINTWISE = (
    *_ACTIVATIONS, _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    _DropoutNd, nn.Identity,
)
# Shape-keeping modules that still mix neighbouring pixels: "keeps H and W" must not let them through.
_KNOWN_UNSUPPORTED = (
    nn.modules.conv._ConvTransposeNd, nn.Conv1d, nn.Conv3d, nn.Upsample, nn.PixelShuffle,
    nn.PixelUnshuffle, nn.Fold, nn.Unfold, nn.MultiheadAttention,
)


@dataclass(frozen=True)
class LayerRow:
    """One executed leaf module: its output shape, receptive field and own parameter count."""

    name: str  # dotted module path, e.g. "conv1.0.0"; " (call 2)" marks a second call of a shared module
    kind: str  # class name, e.g. "Conv2d"
    out_shape: tuple[int, ...]  # output shape without the batch dimension
    rf: int  # receptive field side in input pixels
    jump: int  # input pixels between neighbouring output units
    start: float  # centre of the first output unit's field, in input pixel coordinates
    params: int  # the module's own parameters, each shared tensor counted once
    assumed: bool = False  # an unknown module that keeps H and W, assumed not to mix pixels


@dataclass(frozen=True)
class LayerTable:
    """The rows of `layer_table` plus the input they were measured on; prints as a plain-text table."""

    rows: tuple[LayerRow, ...]
    input_size: tuple[int, int, int]  # (channels, height, width) of one input image
    total_params: int  # all parameters of the model, each tensor counted once

    @property
    def image_side(self) -> int:
        """Return the side of the (square) input image in pixels."""
        return self.input_size[-1]

    @property
    def final_rf(self) -> int:
        """Return the receptive field side of the last executed layer (1 if nothing ran)."""
        return self.rows[-1].rf if self.rows else 1

    @property
    def covers_input(self) -> bool:
        """Return True when the final receptive field is at least as large as the image."""
        return self.final_rf >= self.image_side

    def _first_full_index(self) -> int | None:
        return next((i for i, row in enumerate(self.rows) if row.rf >= self.image_side), None)

    def verdict(self) -> str:
        """Return the sentence saying whether the final receptive field covers the input."""
        side, rf = self.image_side, self.final_rf
        if self.covers_input:
            return f"Final receptive field {rf}x{rf} covers the {side}x{side} input"
        return (f"Final receptive field {rf}x{rf} does NOT cover the {side}x{side} input; "
                "add layers or a max-pool")

    def _cells(self) -> list[list[str]]:
        return [
            [str(i), row.name, row.kind + ("*" if row.assumed else ""), _shape_text(row.out_shape),
             str(row.rf), str(row.jump), f"{row.params:,}"]
            for i, row in enumerate(self.rows)
        ]

    def _footer(self) -> list[str]:
        lines = [f"Total parameters: {self.total_params:,}"]
        unlisted = self.total_params - sum(row.params for row in self.rows)
        if unlisted:
            lines.append(f"({unlisted:,} parameters belong to modules without a row: unused, or held "
                         "by a container)")
        if any(row.assumed for row in self.rows):
            lines.append("* unknown module that keeps height and width, assumed not to mix pixels")
        return [*lines, self.verdict()]

    def to_text(self) -> str:
        """Return the table as aligned plain text; the last line is the coverage verdict."""
        header = ["#", "layer", "kind", "output", "RF", "jump", "params"]
        cells = [header, *self._cells()]
        widths = [max(len(line[col]) for line in cells) for col in range(len(header))]
        left = {1, 2, 3}  # text columns; numbers are right-aligned
        full = self._first_full_index()
        lines = []
        for i, line in enumerate(cells):
            text = "  ".join(c.ljust(w) if col in left else c.rjust(w)
                             for col, (c, w) in enumerate(zip(line, widths, strict=True)))
            if full is not None and i == full + 1:
                text += f"  <- RF reaches {self.image_side}x{self.image_side}"
            lines.append(text.rstrip())
        return "\n".join(lines + self._footer())

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        # The plain-text view outside HTML front ends (a terminal, nbval's text/plain comparison).
        return self.to_text()

    def _repr_html_(self) -> str:
        """Return the table as HTML for Jupyter, highlighting the row where the RF first covers the image."""
        full = self._first_full_index()
        head = "".join(f"<th>{h}</th>" for h in ["#", "layer", "kind", "output", "RF", "jump", "params"])
        body = []
        for i, cells in enumerate(self._cells()):
            style = ' style="background-color:#c8e6c9;font-weight:bold"' if i == full else ""
            tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            body.append(f"<tr{style}>{tds}</tr>")
        footer = "".join(f"<p>{html.escape(line)}</p>" for line in self._footer())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{footer}"


@dataclass(frozen=True)
class _Geometry:
    """The running state of the recursion after the latest layer."""

    rf: int
    jump: int
    start: float
    side: int  # side of the latest spatial map; kept after flattening for the Linear that follows
    flat: bool  # activations are (N, features) after a Flatten
    shape: tuple[int, ...]  # latest output shape, to spot functional ops between two modules
    name: str  # latest layer, for error messages


def layer_table(model: nn.Module, input_size: tuple[int, int, int] = (1, 28, 28)) -> LayerTable:
    """Return every executed leaf module's output shape and receptive field (introduced in notebook 02)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
        raise ValueError(f"input_size must be three positive ints (channels, height, width), got {input_size!r}")
    if size[1] != size[2]:
        raise ValueError(f"input_size must be square (the table tracks one axis), got {size[1]}x{size[2]}")
    trace = trace_forward(model, size, model_device(model))
    geo = _Geometry(rf=1, jump=1, start=0.0, side=size[1], flat=False, shape=size, name="the input")
    rows, seen, sides = [], set(), []
    for call in trace.calls:
        geo, assumed = _step(geo, call)
        sides.append(geo.side)
        own = [p for p in call.module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        rows.append(LayerRow(call.name, type(call.module).__name__, call.out_shape or (), geo.rf, geo.jump,
                             geo.start, sum(p.numel() for p in own), assumed))
    for after, op in trace.flat_softmaxes:
        side = sides[after] if after >= 0 else size[1]
        if side != 1:
            where = "the input" if after < 0 else repr(trace.calls[after].name)
            raise UnsupportedLayerError(
                f"a functional {op} over the flattened features of the {side}x{side} map after {where} mixes the "
                f"whole map, and a functional op gets no row in the table; put a Linear before it, or use "
                f"nn.Flatten and nn.{SOFTMAX_MODULES[op]}(dim=1) so the table can count it. {CHAIN_ADVICE}")
    if isinstance(trace.output, torch.Tensor) and trace.output.dim() in (2, 4):
        _check_continuity(geo, tuple(trace.output.shape[1:]), "the model's output")
    total = count_parameters(model)
    return LayerTable(tuple(rows), size, total)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape) if shape else "-"


def _unsupported(call: LayerCall, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"layer {call.name!r} ({type(call.module).__name__}): {why}. The receptive-field table {SUPPORTED}. "
        "Replace the layer with a supported one, or work out this part of the RF by hand (Araujo et al. 2019)."
    )


def _check_continuity(geo: _Geometry, in_shape: tuple[int, ...], where: str) -> None:
    """Raise if something between two hooked modules (a functional op) changed the spatial geometry."""
    prev = geo.shape
    if len(prev) == 3 and len(in_shape) == 3 and prev[1:] == in_shape[1:]:
        return
    # x.flatten(1) or x.view(n, -1) only reshapes, so it keeps the RF.
    if len(prev) in (1, 3) and len(in_shape) == 1 and _numel(prev) == _numel(in_shape):
        return
    raise UnsupportedLayerError(
        f"a functional op between {geo.name!r} (output {_shape_text(prev)}) and {where} (input "
        f"{_shape_text(in_shape)}) changed the geometry, and forward hooks cannot see it; use an nn.Module "
        "for it (e.g. nn.MaxPool2d instead of F.max_pool2d) so the table can account for it"
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for side in shape:
        n *= side
    return n


def _step(geo: _Geometry, call: LayerCall) -> tuple[_Geometry, bool]:
    """Return the geometry after `call` and whether its effect was assumed; raise if it is unknown."""
    in_shape, out_shape = call.in_shape, call.out_shape
    if in_shape is None or out_shape is None:
        raise _unsupported(call, "its input or output is not a single tensor")
    if len(in_shape) not in (1, 3) or len(out_shape) not in (1, 3):
        raise _unsupported(call, f"it maps a {_shape_text(in_shape)} input to {_shape_text(out_shape)}; "
                                 "only (C, H, W) maps and flat feature vectors are tracked")
    _check_continuity(geo, in_shape, repr(call.name))
    # The input is square: it is the previous layer's output, checked below, or the checked input image.
    flat = len(in_shape) == 1
    geo, assumed = _advance(replace(geo, shape=out_shape, name=call.name, flat=flat), call)
    if len(out_shape) == 3 and out_shape[1] != out_shape[2]:
        raise _unsupported(call, f"its output {_shape_text(out_shape)} is not square; the table tracks one axis")
    return geo, assumed


def _advance(geo: _Geometry, call: LayerCall) -> tuple[_Geometry, bool]:
    """Apply the rule for the module's type: window, adaptive pool, padding, flatten, mixing or pointwise."""
    module, in_shape, out_shape = call.module, call.in_shape or (), call.out_shape or ()
    same_size = in_shape[1:] == out_shape[1:]
    if isinstance(module, _KNOWN_UNSUPPORTED):
        raise _unsupported(call, "its receptive field is not a sliding window over its input")
    if isinstance(module, nn.Flatten):
        if len(out_shape) != 1:
            raise _unsupported(call, "only a Flatten down to (N, features) is tracked")
        return replace(geo, flat=True), False
    if geo.flat:
        if isinstance(module, (nn.Linear, *_SOFTMAX)):
            return _whole_map(geo), False
        return _keep(call, geo, same_size, assumed=not isinstance(module, _POINTWISE))
    if isinstance(module, nn.Linear):
        raise _unsupported(call, "a Linear on a (C, H, W) map mixes only the last axis; flatten first")
    if isinstance(module, _SOFTMAX):
        if module.dim not in (None, 1, -3):  # None: PyTorch picks the channel axis for 4D input
            raise _unsupported(call, f"softmax over dim={module.dim} mixes pixels along one axis only")
        return _keep(call, geo, same_size, assumed=False)
    if isinstance(module, _WINDOWS):
        return _window(call, geo, in_shape[1], out_shape[1]), False
    if isinstance(module, _ADAPTIVE):
        n_in, n_out = in_shape[1], out_shape[1]
        if n_in % n_out:
            raise _unsupported(call, f"adaptive pooling from {n_in} to {n_out} uses uneven, overlapping "
                                     "windows; choose an output size that divides the input side")
        k = n_in // n_out
        return _apply(geo, k=k, s=k, p=0, d=1, side=n_out), False
    if isinstance(module, _PADDING):
        left, right, top, bottom = module.padding
        if (left, right) != (top, bottom):
            raise _unsupported(call, f"non-square padding {module.padding}")
        return _apply(geo, k=1, s=1, p=left, d=1, side=out_shape[1]), False
    return _keep(call, geo, same_size, assumed=not isinstance(module, _POINTWISE))


def _keep(call: LayerCall, geo: _Geometry, same_size: bool, assumed: bool) -> tuple[_Geometry, bool]:
    if not same_size:
        raise _unsupported(call, f"it changes the spatial size ({_shape_text(call.in_shape or ())} -> "
                                 f"{_shape_text(call.out_shape or ())}) in a way the table does not know")
    return geo, assumed


def _whole_map(geo: _Geometry) -> _Geometry:
    # A layer mixing all features acts like a kernel as large as the last feature map, with output side 1.
    return _apply(geo, k=geo.side, s=geo.side, p=0, d=1, side=1)


def _apply(geo: _Geometry, k: int, s: int, p: int, d: int, side: int) -> _Geometry:
    """Advance the Araujo et al. recursion by one window (kernel k, stride s, padding p, dilation d)."""
    k_eff = d * (k - 1) + 1
    return replace(geo, rf=geo.rf + (k_eff - 1) * geo.jump, jump=geo.jump * s,
                   start=geo.start + ((k_eff - 1) / 2 - p) * geo.jump, side=side)


def _window(call: LayerCall, geo: _Geometry, n_in: int, n_out: int) -> _Geometry:
    """Apply a Conv2d or pooling layer, checking its geometry predicts the size PyTorch produced."""
    module = call.module
    k = _square(call, "kernel_size", module.kernel_size)
    s = _square(call, "stride", module.stride or k)  # LPPool2d keeps stride=None for "same as kernel"
    d = _square(call, "dilation", getattr(module, "dilation", 1))
    padding = getattr(module, "padding", 0)
    if padding == "valid":
        p = 0
    elif padding == "same":
        p = d * (k - 1) // 2  # PyTorch puts the odd extra pixel of "same" padding on the far side
    else:
        p = _square(call, "padding", padding)
    expected = (n_in + 2 * p - d * (k - 1) - 1) // s + 1
    if not getattr(module, "ceil_mode", False) and padding != "same" and expected != n_out:
        raise _unsupported(call, f"its output side {n_out} is not the {expected} its kernel, stride and "
                                 "padding give (does a subclass override forward?)")
    return _apply(geo, k=k, s=s, p=p, d=d, side=n_out)


def _square(call: LayerCall, attr: str, value: int | tuple[int, ...]) -> int:
    if isinstance(value, int):
        return value
    values = tuple(value)
    if len(set(values)) != 1:
        raise _unsupported(call, f"non-square {attr} {values}; the table tracks one axis, so height and "
                                 "width must use the same kernel, stride, padding and dilation")
    return int(values[0])

