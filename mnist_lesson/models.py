"""The course's models, one definition each, in a registry shared by notebooks, CLI and tests.

`MODELS` maps a name to a constructor and `RECIPES` maps the same name to the recipe the
model is trained with by default (`python -m mnist_lesson train NAME`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mnist_lesson.config import Recipe

MODELS: dict[str, Callable[[], nn.Module]] = {}
RECIPES: dict[str, Recipe] = {}


def register(name: str, recipe: Recipe) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Return a decorator that registers a model constructor under `name` with its default recipe."""

    def decorator(constructor: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = constructor
        RECIPES[name] = recipe
        return constructor

    return decorator


def _unknown(name: str) -> KeyError:
    return KeyError(f"no model named {name!r}; registered models: {', '.join(sorted(MODELS))}")


def get_model(name: str) -> nn.Module:
    """Return a freshly initialised instance of the registered model `name`."""
    if name not in MODELS:
        raise _unknown(name)
    return MODELS[name]()


def get_recipe(name: str) -> Recipe:
    """Return the default training recipe of the registered model `name`."""
    if name not in RECIPES:
        raise _unknown(name)
    return RECIPES[name]


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 0,
               dropout: float = 0.0) -> nn.Sequential:
    """Return conv (no bias) -> ReLU -> BatchNorm -> Dropout2d, the seed's building block."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def transition(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """Return a 1x1 conv -> ReLU that squeezes channels, optionally followed by a 2x2 max-pool."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


SEED_RECIPE = Recipe(epochs=19, batch_size=128, lr=0.01, momentum=0.9, data="dataloader")


class SeedNet(nn.Module):
    """The assignment's original model: 13,816 parameters, RF 1x1 transitions, BN, Dropout2d, GAP."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            conv_block(1, 8, padding=1, dropout=dropout),  # 28x28
            conv_block(8, 16, padding=1, dropout=dropout),  # 28x28
            conv_block(16, 24, dropout=dropout),  # 26x26
        )
        self.trans1 = transition(24, 8, pool=True)  # 13x13
        self.conv2 = nn.Sequential(
            conv_block(8, 16, dropout=dropout),  # 11x11
            conv_block(16, 24, dropout=dropout),  # 9x9
        )
        self.trans2 = transition(24, 8, pool=False)  # 9x9
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


@register("seed", SEED_RECIPE)
def seed() -> nn.Module:
    """Return the seed model (13,816 parameters); introduced in the foundation, studied in notebook 02."""
    return SeedNet()
