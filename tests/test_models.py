"""The model registry and the seed model."""

from __future__ import annotations

import pytest
import torch
import torchinfo
from torch import nn

from mnist_lesson.config import Recipe
from mnist_lesson.models import MODELS, RECIPES, count_parameters, get_model, get_recipe, register


def test_seed_model_has_13816_parameters_by_torchinfo() -> None:
    stats = torchinfo.summary(get_model("seed"), input_size=(1, 1, 28, 28), verbose=0)
    assert stats.total_params == 13_816
    assert stats.trainable_params == 13_816
    assert count_parameters(get_model("seed")) == 13_816


def test_seed_model_layers_are_the_seeds() -> None:
    model = get_model("seed")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs]
    assert shapes == [(1, 8, 3, 1), (8, 16, 3, 1), (16, 24, 3, 0), (24, 8, 1, 0), (8, 16, 3, 0), (16, 24, 3, 0),
                      (24, 8, 1, 0), (8, 16, 3, 0), (16, 16, 3, 0), (16, 16, 1, 0), (16, 10, 1, 0)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout2d)} == {0.1}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_gives_log_probabilities(name: str) -> None:
    model = get_model(name).eval()
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(4))
    assert isinstance(get_recipe(name), Recipe)
    assert set(MODELS) == set(RECIPES)


def test_seed_recipe_is_the_seeds() -> None:
    recipe = get_recipe("seed")
    assert (recipe.lr, recipe.momentum, recipe.batch_size, recipe.schedule) == (0.01, 0.9, 128, "constant")


def test_unknown_model_names_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="registered models: .*seed"):
        get_model("no-such-model")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("seed", Recipe())(lambda: nn.Identity())


def test_recipe_overrides_reject_unknown_fields() -> None:
    assert Recipe().with_overrides(epochs=3, lr=None).epochs == 3
    with pytest.raises(TypeError, match="no field"):
        Recipe().with_overrides(epoch=3)
