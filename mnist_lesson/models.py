"""The course's models, one definition each, in a registry shared by notebooks, CLI and tests.

`MODELS` maps a name to a constructor; `recipes.RECIPES` maps the same name to the recipe the model is trained
with by default (`python -m mnist_lesson train NAME`), and `register` checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mnist_lesson.config import Recipe, UsageError
from mnist_lesson.recipes import (
    ASSIGNMENT_RECIPE,
    FINAL_RECIPE,
    FIRST_RECIPE,
    RECIPES,
    SMALLER_RECIPE,
    STEP_RECIPE,
    UNDER5K_RECIPE,
    UNDER8K_RECIPE,
    UNDER3762_RECIPE,
)

MODELS: dict[str, Callable[[], nn.Module]] = {}


def register(name: str, recipe: Recipe) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Return a decorator that registers a model constructor under `name`; `recipe`, its default recipe, must be
    the one `recipes.RECIPES` lists for `name` (every recipe lives in recipes.py)."""

    def decorator(constructor: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        if constructor.__name__ != f"{name}_net":  # so a constructor never shadows an argument called like the model
            raise ValueError(f"name the constructor of {name!r} {name}_net, not {constructor.__name__}")
        if name not in RECIPES:
            raise ValueError(f"add {name!r} and its recipe to RECIPES in mnist_lesson/recipes.py, where every model's "
                             "recipe is listed")
        if RECIPES[name] != recipe:
            raise ValueError(f"{name!r} is registered with {recipe}, but RECIPES in mnist_lesson/recipes.py lists "
                             f"{RECIPES[name]}")
        MODELS[name] = constructor
        return constructor

    return decorator


def _unknown(name: str) -> UsageError:
    return UsageError(f"no model named {name!r}; registered models: {', '.join(MODELS)}")


def get_model(name: str) -> nn.Module:
    """Return a freshly initialized instance of the registered model `name`."""
    if name not in MODELS:
        raise _unknown(name)
    return MODELS[name]()


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 0,
               dropout: float = 0.0, batch_norm: bool = True) -> nn.Sequential:
    """Return conv -> ReLU -> BatchNorm -> Dropout2d (the assignment's block); BN and dropout can be left out."""
    layers: list[nn.Module] = [
        # The assignment drops the conv bias when BN is on. In this order the bias still shifts what the ReLU
        # cuts, so it is not strictly redundant (it would be if BN came straight after the conv); without BN
        # the conv keeps its bias.
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=not batch_norm),
        nn.ReLU(),
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def transition_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """Return a 1x1 conv -> ReLU that squeezes channels, optionally followed by a 2x2 max-pool."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class AssignmentNet(nn.Module):
    """The assignment's original model: 13,816 parameters, 1x1 transitions, BN, Dropout2d, GAP."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            conv_block(1, 8, padding=1, dropout=dropout),  # 28x28
            conv_block(8, 16, padding=1, dropout=dropout),  # 28x28
            conv_block(16, 24, dropout=dropout),  # 26x26
        )
        self.trans1 = transition_block(24, 8, pool=True)  # 13x13
        self.conv2 = nn.Sequential(
            conv_block(8, 16, dropout=dropout),  # 11x11
            conv_block(16, 24, dropout=dropout),  # 9x9
        )
        self.trans2 = transition_block(24, 8, pool=False)  # 9x9
        self.conv3 = nn.Sequential(
            conv_block(8, 16, dropout=dropout),  # 7x7
            conv_block(16, 16, dropout=dropout),  # 5x5
        )
        self.gap = nn.AvgPool2d(5)  # 1x1
        self.head = nn.Sequential(
            conv_block(16, 16, kernel_size=1, dropout=dropout),
            nn.Conv2d(16, 10, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.trans2(self.conv2(self.trans1(self.conv1(x)))))
        x = self.head(self.gap(x))
        return torch.log_softmax(x.flatten(1), dim=1)


@register("assignment", ASSIGNMENT_RECIPE)
def assignment_net() -> nn.Module:
    """Return the assignment's model (13,816 parameters), the course's starting point."""
    return AssignmentNet()


# --- the notebook series: one model per step --------------------------------------------------------

class FirstNet(nn.Module):
    """Notebook 01: the large network most tutorials stop at (two convs, then a big fully connected layer)."""

    def __init__(self, side: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(),  # side - 2
            nn.Conv2d(32, 64, 3), nn.ReLU(),  # side - 4
            nn.MaxPool2d(2), nn.Dropout(0.25),  # (side - 4) / 2
        )
        flat = 64 * ((side - 4) // 2) ** 2  # 64 x 12 x 12 = 9,216 features for a 28x28 digit
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10), nn.LogSoftmax(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class StepNet(nn.Module):
    """Notebooks 02-07: one skeleton designed from the receptive field; each step switches on one idea.

    squeeze: 1x1 transitions that cut 32 channels to 8 after each expanding block (notebook 03)
    batch_norm: BatchNorm after every 3x3 conv (notebook 04)
    dropout: Dropout2d probability after every 3x3 conv (notebook 05)
    gap: global average pooling + 1x1 conv instead of a 4x4 conv as the last layer (notebook 06)
    head_width: hidden 1x1 layer of this width after the average pool, 0 for none (notebook 07)
    width: channels of the last 3x3 conv, the features the average pool summarizes (notebook 07)
    """

    def __init__(self, squeeze: bool = False, batch_norm: bool = False, dropout: float = 0.0, gap: bool = False,
                 head_width: int = 0, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, padding: int = 0) -> nn.Sequential:
            return conv_block(c_in, c_out, padding=padding, dropout=dropout, batch_norm=batch_norm)

        squeezed = 8 if squeeze else 32
        # Comments: output side, receptive field (RF) in input pixels.
        self.block1 = nn.Sequential(block(1, 8, padding=1), block(8, 16), block(16, 32))  # 24, RF 7
        squeeze1 = [transition_block(32, 8, pool=False)] if squeeze else []
        self.trans1 = nn.Sequential(*squeeze1, nn.MaxPool2d(2))  # 12, RF 8
        self.block2 = nn.Sequential(block(squeezed, 16), block(16, 32))  # 8, RF 16
        self.trans2 = transition_block(32, 8, pool=False) if squeeze else nn.Identity()
        self.block3 = nn.Sequential(block(squeezed, 16), block(16, width))  # 4, RF 24
        if not gap:
            self.head = nn.Conv2d(width, 10, 4)  # 1, RF 30: one big kernel over the whole 4x4 map
        elif head_width:
            hidden = conv_block(width, head_width, kernel_size=1, batch_norm=batch_norm)
            self.head = nn.Sequential(nn.AvgPool2d(4), hidden, nn.Conv2d(head_width, 10, 1, bias=False))
        else:
            self.head = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(width, 10, 1, bias=False))  # 1, RF 30

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.trans2(self.block2(self.trans1(self.block1(x)))))
        return torch.log_softmax(self.head(x).flatten(1), dim=1)


@register("first", FIRST_RECIPE)
def first_net() -> nn.Module:
    """Return the large first network of notebook 01 (1.2M parameters)."""
    return FirstNet()


@register("skeleton", STEP_RECIPE)
def skeleton_net() -> nn.Module:
    """Return the receptive-field skeleton of notebook 02: 3x3 convs, one max-pool, a 4x4 last conv."""
    return StepNet()


@register("transitions", STEP_RECIPE)
def transitions_net() -> nn.Module:
    """Return notebook 03's model: the skeleton with 1x1 transitions that squeeze 32 channels to 8."""
    return StepNet(squeeze=True)


@register("batchnorm", STEP_RECIPE)
def batchnorm_net() -> nn.Module:
    """Return notebook 04's model: transitions plus BatchNorm after every 3x3 conv."""
    return StepNet(squeeze=True, batch_norm=True)


@register("dropout", STEP_RECIPE)
def dropout_net() -> nn.Module:
    """Return notebook 05's model: batchnorm plus Dropout2d(0.1) after every 3x3 conv."""
    return StepNet(squeeze=True, batch_norm=True, dropout=0.1)


@register("gap", STEP_RECIPE)
def gap_net() -> nn.Module:
    """Return notebook 06's model: dropout with global average pooling in place of the 4x4 last conv."""
    return StepNet(squeeze=True, batch_norm=True, dropout=0.1, gap=True)


@register("final", FINAL_RECIPE)
def final_net() -> nn.Module:
    """Return notebook 07's final model: gap with 24 pooled features and a 32-wide 1x1 layer after the pool."""
    return StepNet(squeeze=True, batch_norm=True, dropout=0.05, gap=True, head_width=32, width=24)


# --- notebook 08: the parameter ladder ------------------------------------------------------------------

def separable_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return a depthwise 3x3 conv (one filter per channel) -> pointwise 1x1 conv -> ReLU -> BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
    )


class LadderNet(nn.Module):
    """Notebook 08: the final model's layout with depthwise-separable convolutions and every width a parameter.

    before_pool: widths of the 3x3 convs before the max-pool; the first is a plain padded conv (it sees one
        channel), the others are separable (a 3x3 filter per channel, then a 1x1 mix)
    after_pool: widths of the separable 3x3 convs after the pool, then global average pooling and a 1x1 conv
        to the classes
    """

    def __init__(self, before_pool: tuple[int, ...], after_pool: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_block(1, before_pool[0], padding=1)]
        channels = before_pool[0]
        for width in before_pool[1:]:
            layers.append(separable_block(channels, width))
            channels = width
        layers.append(nn.MaxPool2d(2))
        for width in after_pool:
            layers.append(separable_block(channels, width))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 10, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(self.features(x)).flatten(1), dim=1)


class BlocksNet(nn.Module):
    """Notebook 08's appendix: the smallest public layout at 99.4% as one design of a lever study (issue 26).

    Blocks of `convs_per_block` padded 3x3 conv blocks (conv -> ReLU -> BatchNorm), one block per width, a 2x2
    max-pool between blocks, then global average pooling and a 1x1 conv to the classes. widths=(4, 8, 8) is the
    public 3,762-parameter model's layout, here without its conv biases (3,692 parameters).
    """

    def __init__(self, widths: tuple[int, ...], convs_per_block: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_block):
                layers.append(conv_block(channels, width, padding=1))
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 10, 1, bias=False))

    forward = LadderNet.forward  # the same features -> pooled head -> log-probabilities


@register("under8k", UNDER8K_RECIPE)
def under8k_net() -> nn.Module:
    """Return the ladder's first rung (6,920 parameters): depthwise-separable convolutions after the first."""
    return LadderNet((8, 16, 32), (32, 40, 48))


@register("under5k", UNDER5K_RECIPE)
def under5k_net() -> nn.Module:
    """Return the ladder's second rung (4,832 parameters): depthwise-separable convolutions after the first."""
    return LadderNet((8, 16, 24), (24, 32, 40))


@register("under3762", UNDER3762_RECIPE)
def under3762_net() -> nn.Module:
    """Return the ladder's stretch rung (3,656 parameters): under5k's layers before the pool, 24 wide after it."""
    return LadderNet((8, 16, 24), (24, 24, 24))


# The ladder's rungs, each with the parameter count it must stay under.
LADDER: dict[str, int] = {"under8k": 8_000, "under5k": 5_000, "under3762": 3_762}


# Below the stretch rung (issue 26): its layout shrunk by a rule fixed before any run (equal widths after the pool,
# none before it wider), with its recipe. The same networks are the designs of the study "smaller".
@register("under3000", SMALLER_RECIPE)
def under3000_net() -> nn.Module:
    """Return the stretch rung's layout at 20 channels after the pool (2,884 parameters)."""
    return LadderNet((8, 16, 20), (20, 20, 20))


@register("under2500", SMALLER_RECIPE)
def under2500_net() -> nn.Module:
    """Return the stretch rung's layout at 18 channels after the pool, 14 and 18 before it (2,460 parameters)."""
    return LadderNet((8, 14, 18), (18, 18, 18))


@register("under2100", SMALLER_RECIPE)
def under2100_net() -> nn.Module:
    """Return the stretch rung's layout at 16 channels after the pool, 12 and 16 before it (2,068 parameters)."""
    return LadderNet((8, 12, 16), (16, 16, 16))


# The sizes below the stretch rung, each with the parameter count it must stay under; each one is reported on its
# test seeds whether it holds or not.
SMALLER_SIZES: dict[str, int] = {"under3000": 3_000, "under2500": 2_500, "under2100": 2_100}
