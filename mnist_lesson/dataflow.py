"""Follow a single forward pass and refuse data flow that is not one chain, or functional ops that mix pixels.

`trace_forward` runs the pass and returns the leaf modules' calls in order (`LayerCall`), which
`receptive_field.layer_table` turns into rows; every refusal is an `UnsupportedLayerError` that ends with
`CHAIN_ADVICE`. Introduced in notebook 02.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class UnsupportedLayerError(ValueError):
    """Raised when the receptive field of a layer cannot be derived from its geometry."""


@dataclass(frozen=True)
class LayerCall:
    """What a forward hook saw: one call of a leaf module (shapes without the batch dimension)."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None


CHAIN_ADVICE = (
    "The receptive-field table follows a single chain of nn.Module layers, each taking the previous one's output "
    "(F.relu, x.flatten(1) and scalar arithmetic between them are fine); it does not follow branches, skip "
    "connections or functional pooling. Use modules in one chain, or work out the RF by hand (Araujo et al. 2019)."
)
# Ops allowed between two layers. Names are those of the functions torch dispatches: torch.relu, Tensor.relu and
# F.relu are all "relu"; `x * 2` is "mul" and `x += y` is "add_".
_RESHAPES = frozenset({
    "flatten", "unflatten", "view", "view_as", "reshape", "reshape_as", "squeeze", "squeeze_", "unsqueeze",
    "unsqueeze_", "contiguous",
})
_CONVERSIONS = frozenset({
    "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda", "detach", "detach_", "clone",
    "data", "requires_grad_",
})
_ELEMENTWISE = frozenset({
    # activations
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_",
    "gelu", "silu", "mish", "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "softplus", "softsign", "logsigmoid", "tanhshrink", "softshrink", "hardshrink", "threshold",
    "threshold_", "rrelu", "rrelu_", "prelu",
    # dropout: identity in eval mode, and even in training it zeroes elements or whole channels, never mixes
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    # arithmetic, comparisons, clamping
    "add", "add_", "sub", "sub_", "subtract", "rsub", "__rsub__", "mul", "mul_", "multiply", "div", "div_",
    "divide", "true_divide", "__rdiv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "remainder", "pow",
    "pow_", "__rpow__", "neg", "neg_", "negative", "positive", "abs", "abs_", "exp", "exp_", "log", "log_",
    "sqrt", "sqrt_", "rsqrt", "square", "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max", "maximum",
    "minimum", "where", "gt", "ge", "lt", "le", "eq", "ne", "__setitem__",
})
SOFTMAX_MODULES = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "softmin": "Softmin"}
_FACTORIES = frozenset({
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros", "new_ones",
    "new_full", "new_empty",
})
_MODULE_FOR = {  # functional op -> the module that gives the table a row for it
    "avg_pool2d": "nn.AvgPool2d instead of F.avg_pool2d", "max_pool2d": "nn.MaxPool2d instead of F.max_pool2d",
    "lp_pool2d": "nn.LPPool2d instead of F.lp_pool2d", "conv2d": "nn.Conv2d instead of F.conv2d",
    "adaptive_avg_pool2d": "nn.AdaptiveAvgPool2d instead of F.adaptive_avg_pool2d",
    "adaptive_max_pool2d": "nn.AdaptiveMaxPool2d instead of F.adaptive_max_pool2d",
    "pad": "nn.ZeroPad2d (or another 2D padding module) instead of F.pad", "linear": "nn.Linear instead of F.linear",
    "batch_norm": "nn.BatchNorm2d instead of F.batch_norm",
    "mean": "nn.AdaptiveAvgPool2d(1) instead of x.mean((2, 3)) for global average pooling",
}


@dataclass(frozen=True)
class ForwardTrace:
    """What one traced forward pass saw."""

    calls: list[LayerCall]  # the leaf modules in the order they ran
    flat_softmaxes: list[tuple[int, str]]  # (index of the call before it, op) for each softmax over flat features
    output: Any


class _DataFlow(TorchFunctionMode):
    """Follow which layer's output every tensor of a forward pass derives from, and refuse non-chain data flow.

    Forward pre- and post-hooks on the leaf modules mark when the pass is inside a leaf (whose own torch calls
    are its business) and record each call. Outside the leaves, __torch_function__ sees every torch function
    and tags each tensor it returns with the index of the call whose output it derives from (-1: the input).
    """

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.calls: list[LayerCall] = []
        self.flat_softmaxes: list[tuple[int, str]] = []
        self.depth = 0  # > 0 while inside a leaf module's forward
        self.counts: dict[int, int] = {}
        self.tags: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor, kept alive so ids stay unique; tag)
        self.pending: tuple[str, str, int] | None = None  # (op, why, tag) of a refused op, until we know what follows
        self.error: UnsupportedLayerError | None = None

    # --- tags ------------------------------------------------------------------------------------------

    def tag(self, value: Any, index: int) -> None:
        """Mark every tensor in `value` as derived from call `index` (-1: the model's input)."""
        for t in _tensors(value):
            self.tags[id(t)] = (t, index)

    def tag_of(self, t: torch.Tensor) -> int | None:
        entry = self.tags.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def source(self, index: int) -> str:
        return "the model's input" if index < 0 else f"the output of {self.calls[index].name!r}"

    def sources(self, indices: list[int]) -> str:
        return " and ".join(self.source(i) for i in indices)

    # --- errors ----------------------------------------------------------------------------------------

    def fail(self, message: str) -> NoReturn:
        """Raise (and remember, in case the model catches it) an UnsupportedLayerError ending with the advice."""
        if self.error is None:
            self.error = UnsupportedLayerError(f"{message}. {CHAIN_ADVICE}")
        raise self.error

    def flush(self, where: str) -> None:
        """Raise the refused functional op seen since the last layer, now that we know what comes after it."""
        if self.pending is None:
            return
        op, why, index = self.pending
        before = "the model's input" if index < 0 else repr(self.calls[index].name)
        self.fail(f"a functional op between {before} and {where} ({op}, called outside any nn.Module) {why}")

    def refuse_later(self, op: str, why: str, index: int) -> None:
        if self.pending is None and self.error is None:
            self.pending = (op, why, index)

    # --- leaf modules ----------------------------------------------------------------------------------

    def enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: check that the leaf takes the output of the layer that ran just before it."""
        self.depth += 1
        if self.depth > 1:
            return  # a module called inside a leaf's forward is part of that leaf
        name, kind = self.next_name(module), type(module).__name__
        self.flush(repr(name))
        indices = sorted({i for t in _tensors((args, kwargs)) if (i := self.tag_of(t)) is not None})
        last = len(self.calls) - 1
        if not indices:
            self.fail(f"layer {name!r} ({kind}) does not take a tensor computed from the model's input, so it is not "
                      "part of the chain from input to output")
        if len(indices) > 1:
            self.fail(f"layer {name!r} ({kind}) takes {self.sources(indices)} at once: the model merges parallel "
                      "branches or a skip connection")
        if indices[0] != last:  # an earlier tensor: tags never run ahead of the calls, so last >= 0 here
            self.fail(f"layer {name!r} ({kind}) takes {self.source(indices[0])}, but the layer that ran just before it "
                      f"was {self.calls[last].name!r}: the model has parallel branches, a skip connection or a module "
                      "applied twice to the same tensor")

    def leave(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Forward hook: record the call and tag its output."""
        try:
            if self.depth == 1:
                name = self.next_name(module)
                self.counts[id(module)] = self.counts.get(id(module), 0) + 1
                x = next(iter(_tensors((args, kwargs))), None)
                self.calls.append(LayerCall(name, module, _shape(x), _shape(out)))
                self.tag(out, len(self.calls) - 1)
        finally:
            self.depth -= 1

    def next_name(self, module: nn.Module) -> str:
        n = self.counts.get(id(module), 0) + 1
        return self.names[id(module)] + (f" (call {n})" if n > 1 else "")

    # --- everything else ------------------------------------------------------------------------------

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.depth:
            return result  # inside a leaf module: its geometry is judged from its type and shapes
        op = _op_name(func)
        used = args[:1] if op in ("view_as", "reshape_as", "type_as") else (args, kwargs)  # others give a shape
        data = [(t, i) for t in _tensors(used) if (i := self.tag_of(t)) is not None]
        outs = _tensors(result)
        if not data or (not outs and op != "__setitem__") or op in _FACTORIES:
            return result  # constants, or a query (size, dim, item, printing) that returns no tensor
        indices = sorted({i for _, i in data})
        if len(indices) > 1:
            self.flush(f"the {op!r} that follows")
            self.fail(f"{op!r} combines {self.sources(indices)} outside any nn.Module: the model merges parallel "
                      "branches or a skip connection")
        index = indices[0]
        if op in _ELEMENTWISE:
            bigger = [tuple(t.shape) for t in outs if any(t.shape != d.shape for d, _ in data)]
            if bigger:
                self.refuse_later(op, f"broadcasts {self.source(index)} to the shape {bigger[0]}", index)
        elif op in SOFTMAX_MODULES:
            self.check_softmax(op, args, kwargs, index)
        elif op not in _RESHAPES and op not in _CONVERSIONS:
            hint = _MODULE_FOR.get(op)
            why = (f"mixes pixels where the table cannot see it; use {hint}" if hint
                   else "is not one the table knows to keep every pixel in place")
            self.refuse_later(op, why, index)
        self.tag(result, index)
        return result

    def check_softmax(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> None:
        """Allow a softmax over channels, or over flat features (checked against the geometry afterwards)."""
        x = args[0] if args else kwargs.get("input")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        ndim = x.dim() if isinstance(x, torch.Tensor) else -1
        if ndim == 4 and dim in (None, 1, -3):
            return  # over the channels at each pixel: pointwise in space
        if ndim == 2 and dim in (None, 1, -1):
            self.flat_softmaxes.append((index, op))
            return
        self.refuse_later(op, f"runs over dim={dim} of a {ndim}-D tensor; only a softmax over the channels is "
                              f"pointwise in space (use nn.{SOFTMAX_MODULES[op]}(dim=1))", index)


def _op_name(func: Any) -> str:
    """Return the name of a dispatched torch function: 'relu' for F.relu, 'data' for the Tensor.data getter."""
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a Tensor property such as .shape or .data
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _tensors(value: Any) -> list[torch.Tensor]:
    """Return the tensors in `value`, looking into tuples, lists and dict values."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def trace_forward(model: nn.Module, size: tuple[int, ...], device: torch.device) -> ForwardTrace:
    """Run one batch-1 forward pass in eval mode on `device` (the model's), following the data flow; restore modes
    and hooks."""
    names = {id(m): path or type(m).__name__ for path, m in model.named_modules()}
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    modes = [(m, m.training) for m in model.modules()]  # per module: a model may mix train and eval parts
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    flow = _DataFlow(names)
    handles = [m.register_forward_pre_hook(flow.enter, prepend=True, with_kwargs=True) for m in leaves]
    handles += [m.register_forward_hook(flow.leave, with_kwargs=True) for m in leaves]
    try:
        model.eval()
        x = torch.zeros(1, *size, device=device, dtype=dtype)
        flow.tag(x, -1)
        with torch.no_grad(), flow:
            output = model(x)
        flow.flush("the model's output")
        if flow.error is not None:  # raised during the pass, but the model caught it
            raise flow.error
        last = len(flow.calls) - 1
        wrong = sorted({i for t in _tensors(output) if (i := flow.tag_of(t)) is not None and i != last})
        if wrong:  # as in enter(), last >= 0 here
            flow.fail(f"the model returns {flow.sources(wrong)}, but the last layer to run was "
                      f"{flow.calls[last].name!r}: the table would describe a layer the output does not come from")
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    return ForwardTrace(flow.calls, flow.flat_softmaxes, output)


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(int(n) for n in value.shape[1:]) if isinstance(value, torch.Tensor) else None
