"""The model registry and the assignment's model."""

from __future__ import annotations

import pytest
import torch
import torchinfo
from torch import nn

from mnist_lesson.budget import count_parameters
from mnist_lesson.config import BUDGET, Recipe, UsageError
from mnist_lesson.models import LADDER, MODELS, SMALLER_SIZES, get_model, register
from mnist_lesson.recipes import RECIPES


def test_assignment_model_has_13816_parameters_by_torchinfo() -> None:
    stats = torchinfo.summary(get_model("assignment"), input_size=(1, 1, 28, 28), verbose=0)
    assert stats.total_params == 13_816
    assert stats.trainable_params == 13_816
    assert count_parameters(get_model("assignment")) == 13_816


def test_count_parameters_counts_frozen_ones_too() -> None:
    """The assignment counts every parameter; freezing one changes nothing."""
    model = get_model("assignment")
    model.head[1].weight.requires_grad_(False)
    assert count_parameters(model) == 13_816


def test_assignment_model_layers_are_the_assignments() -> None:
    model = get_model("assignment")
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


def test_unknown_model_names_the_registered_ones() -> None:
    with pytest.raises(UsageError, match="registered models: assignment, first"):
        get_model("no-such-model")


def test_registering_a_name_twice_or_a_clashing_constructor_is_refused() -> None:
    def assignment_net() -> nn.Module:
        return nn.Identity()

    def dropout() -> nn.Module:  # named like an argument of the module: the trap the convention avoids
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register("assignment", Recipe())(assignment_net)
    with pytest.raises(ValueError, match="name the constructor of 'mine' mine_net"):
        register("mine", Recipe())(dropout)
    assert "mine" not in MODELS


def test_registering_a_recipe_other_than_the_one_recipes_lists_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recipe lives in recipes.RECIPES; the recipe named at registration must be that one."""

    def mine_net() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="add 'mine' and its recipe to RECIPES in mnist_lesson/recipes.py"):
        register("mine", Recipe())(mine_net)
    monkeypatch.setitem(RECIPES, "mine", Recipe(epochs=3))
    with pytest.raises(ValueError, match=r"'mine' is registered with Recipe\(epochs=15.*lists Recipe\(epochs=3"):
        register("mine", Recipe())(mine_net)
    assert "mine" not in MODELS


def test_recipe_overrides_reject_unknown_fields() -> None:
    assert Recipe().with_overrides(epochs=3, lr=None).epochs == 3
    with pytest.raises(UsageError, match="no field"):
        Recipe().with_overrides(epoch=3)


# Parameter counts worked out by hand (weights + biases, BN = 2 per channel), checked against torchinfo.
# skeleton: block1 (1*8*9+8) + (8*16*9+16) + (16*32*9+32) = 5,888; block2 (32*16*9+16) + (16*32*9+32) = 9,264;
#   block3 (32*16*9+16) + (16*16*9+16) = 6,944; head 16*10*16+10 = 2,570 -> 24,666
# transitions: block1 5,888; trans1 32*8 = 256; block2 (8*16*9+16) + 4,640 = 5,808; trans2 256;
#   block3 (8*16*9+16) + 2,320 = 3,488; head 2,570 -> 18,266
# batchnorm: conv biases (8+16+32+16+32+16+16 = 136) become BN pairs (272): 18,266 - 136 + 272 = 18,402
# gap: head 2,570 -> 16*10 = 160: 18,402 - 2,410 = 15,992
# final: block3's last conv 16 -> 24 channels: (16*24*9 + 2*24) - (16*16*9 + 2*16) = +1,168;
#   head 160 -> 24*32 + 2*32 + 32*10 = 1,152 (+992): 15,992 + 1,168 + 992 = 18,152
# first: 1*32*9+32 + 32*64*9+64 + 9216*128+128 + 128*10+10 = 1,199,882
# The ladder (notebook 08): a separable block costs 9*c_in (depthwise) + c_in*c_out (pointwise) + 2*c_out (BN);
#   the first conv 1*8*9 + 16 = 88 and the head c*10.
# under8k: 88 + sep(8,16) 232 + sep(16,32) 720 + sep(32,32) 1,376 + sep(32,40) 1,648 + sep(40,48) 2,376 + 480 = 6,920
# under5k: 88 + sep(8,16) 232 + sep(16,24) 576 + sep(24,24) 840 + sep(24,32) 1,048 + sep(32,40) 1,648 + 400 = 4,832
# under3762: 88 + sep(8,16) 232 + sep(16,24) 576 + sep(24,24) 840 * 3 + 240 = 3,656 (issue 26; first registered as
#   (8, 12, 18), (18, 28, 40): 88 + 192 + 360 + 522 + 722 + 1,452 + 400 = 3,736, still a design of its lever study)
# Below the stretch rung (issue 26, going smaller), the same layout narrower:
# under3000: 88 + sep(8,16) 232 + sep(16,20) 504 + sep(20,20) 620 * 3 + 200 = 2,884
# under2500: 88 + sep(8,14) 212 + sep(14,18) 414 + sep(18,18) 522 * 3 + 180 = 2,460
# under2100: 88 + sep(8,12) 192 + sep(12,16) 332 + sep(16,16) 432 * 3 + 160 = 2,068
EXPECTED = {"first": 1_199_882, "skeleton": 24_666, "transitions": 18_266, "batchnorm": 18_402, "dropout": 18_402,
            "gap": 15_992, "final": 18_152, "assignment": 13_816, "under8k": 6_920, "under5k": 4_832,
            "under3762": 3_656, "under3000": 2_884, "under2500": 2_460, "under2100": 2_068}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_step_models_have_their_hand_computed_size(name: str) -> None:
    assert torchinfo.summary(get_model(name), input_size=(1, 1, 28, 28), verbose=0).total_params == EXPECTED[name]


def test_every_model_under_the_budget_except_the_deliberate_ones() -> None:
    over = {name for name in MODELS if count_parameters(get_model(name)) >= BUDGET}
    assert over == {"first", "skeleton"}


def test_every_ladder_rung_and_smaller_size_stays_under_its_limit() -> None:
    assert set(LADDER) | set(SMALLER_SIZES) <= set(MODELS) and not set(LADDER) & set(SMALLER_SIZES)
    for name, limit in {**LADDER, **SMALLER_SIZES}.items():
        assert count_parameters(get_model(name)) < limit, name
    # Each size is smaller than the one before it, and all below the stretch rung.
    counts = [count_parameters(get_model(name)) for name in ["under3762", *SMALLER_SIZES]]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)


def test_separable_block_is_a_per_channel_3x3_then_a_1x1_mix() -> None:
    from mnist_lesson.models import separable_block

    block = separable_block(8, 16)
    depthwise, pointwise = block[0], block[1]
    assert depthwise.groups == 8 and depthwise.weight.shape == (8, 1, 3, 3)
    assert pointwise.weight.shape == (16, 8, 1, 1)
    assert count_parameters(block) == 9 * 8 + 8 * 16 + 2 * 16
    assert block(torch.zeros(2, 8, 10, 10)).shape == (2, 16, 8, 8)


def test_the_public_layout_is_rebuilt_without_its_conv_biases() -> None:
    """Issue 26's lever study compares the smallest public layout at 99.4% (3,762 parameters with conv biases)."""
    from mnist_lesson.models import BlocksNet

    model = BlocksNet((4, 8, 8))
    assert count_parameters(model) == 3_692  # 3,762 minus the 70 biases of its nine convs and its head
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 9
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
