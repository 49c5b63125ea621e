"""Parameter budget: hand counts for the assignment's model, torchinfo as a second count, the strict limit."""

from __future__ import annotations

import pytest
import torch
import torchinfo
from torch import nn

from mnist_lesson.budget import BudgetError, block_params, check_budget, count_parameters, parameter_report
from mnist_lesson.models import get_model

# The assignment's blocks by hand (3x3 conv without bias: in * out * 9; BatchNorm: 2 * channels):
#   conv1  = (1*8*9 + 16) + (8*16*9 + 32) + (16*24*9 + 48) = 88 + 1184 + 3504 = 4776
#   trans1 = 24*8 (1x1 conv)                                                    =  192
#   conv2  = (8*16*9 + 32) + (16*24*9 + 48) = 1184 + 3504                       = 4688
#   trans2 = 24*8                                                               =  192
#   conv3  = (8*16*9 + 32) + (16*16*9 + 32) = 1184 + 2336                       = 3520
#   gap    = 0 (average pooling has no weights)
#   head   = (16*16 + 32) + 16*10 = 288 + 160                                   =  448
#   total  = 13,816; heaviest: conv1 (34.6%), conv2 (33.9%), conv3 (25.5%)
ASSIGNMENT_BLOCKS = [("conv1", 4776), ("trans1", 192), ("conv2", 4688), ("trans2", 192), ("conv3", 3520),
               ("gap", 0), ("head", 448)]


@pytest.fixture(scope="module")
def assignment() -> nn.Module:
    return get_model("assignment")


def test_assignment_total_matches_torchinfo(assignment: nn.Module) -> None:
    stats = torchinfo.summary(assignment, input_size=(1, 1, 28, 28), verbose=0, depth=1)
    assert check_budget(assignment, 20_000) == 13_816 == stats.total_params
    assert count_parameters(assignment) == 13_816


def test_assignment_blocks_by_hand_and_torchinfo(assignment: nn.Module) -> None:
    blocks = block_params(assignment)
    assert [(b.name, b.params) for b in blocks] == ASSIGNMENT_BLOCKS
    stats = torchinfo.summary(assignment, input_size=(1, 1, 28, 28), verbose=0, depth=1)
    theirs = [(layer.var_name, layer.num_params) for layer in stats.summary_list if layer.depth == 1]
    assert theirs == ASSIGNMENT_BLOCKS
    assert sum(b.percent for b in blocks) == pytest.approx(100.0)
    assert [round(b.percent, 1) for b in blocks] == [34.6, 1.4, 33.9, 1.4, 25.5, 0.0, 3.2]


def test_depth_two_splits_blocks(assignment: nn.Module) -> None:
    blocks = {b.name: b.params for b in block_params(assignment, depth=2)}
    assert (blocks["conv1.0"], blocks["conv1.1"], blocks["conv1.2"]) == (88, 1184, 3504)
    assert blocks["gap"] == 0  # a leaf at depth 1 stays its own block
    assert sum(blocks.values()) == 13_816


class OwnScale(nn.Module):
    """A container that holds a parameter itself, next to a child."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.body = nn.Linear(2, 2)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight


def test_container_parameters_and_shared_tensors_are_counted_once() -> None:
    assert [(b.name, b.params) for b in block_params(OwnScale())] == [("OwnScale", 3), ("body", 6)]
    # b reuses a's 4x4 weight: a = 16 + 4, b = its bias 4 only; 24 unique parameters.
    assert [(b.name, b.params) for b in block_params(Tied())] == [("a", 20), ("b", 4)]
    assert check_budget(Tied(), 25) == 24


def test_parameter_report(assignment: nn.Module) -> None:
    plain = parameter_report(assignment)
    assert plain.splitlines()[0].split() == ["block", "params", "%"]
    assert plain.splitlines()[1].split() == ["conv1", "4,776", "34.6%"]
    assert plain.splitlines()[-1].split() == ["total", "13,816", "100.0%"]
    assert "budget" not in plain.lower()
    assert parameter_report(assignment, 20_000).endswith("under budget by 6,184")  # 20,000 - 13,816
    # 13,816 - 10,000 + 1: the limit is strict, so 3,817 parameters must go.
    assert "OVER budget by 3,817" in parameter_report(assignment, 10_000).splitlines()[-1]


def test_limit_is_strict(assignment: nn.Module) -> None:
    assert check_budget(assignment, 13_817) == 13_816
    with pytest.raises(BudgetError, match="fewer than 13,816"):
        check_budget(assignment, 13_816)


def test_over_budget_message_names_heaviest_blocks(assignment: nn.Module) -> None:
    with pytest.raises(BudgetError) as info:
        check_budget(assignment, 10_000)
    message = str(info.value)
    heaviest = ["conv1 4,776 (34.6%)", "conv2 4,688 (33.9%)", "conv3 3,520 (25.5%)"]
    positions = [message.index(text) for text in heaviest]
    assert positions == sorted(positions)
    assert "head" not in message.split("Heaviest blocks:")[1].split(".")[0]  # only the top 3
    assert "1x1" in message and "global average pooling" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("limit", "error"), [
    ("20000", TypeError), (20_000.0, TypeError), (True, TypeError), (0, ValueError), (-5, ValueError)])
def test_bad_limit(assignment: nn.Module, limit: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="limit"):
        check_budget(assignment, limit)  # type: ignore[arg-type]
    with pytest.raises(error, match="limit"):
        parameter_report(assignment, limit)  # type: ignore[arg-type]


def test_bad_model_and_depth(assignment: nn.Module) -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        check_budget("assignment", 20_000)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        block_params(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        block_params(assignment, depth=0)


def test_params_by_kind_splits_separable_rungs_and_plain_models() -> None:
    from mnist_lesson.budget import params_by_kind
    from mnist_lesson.models import get_model

    kinds = params_by_kind(get_model("under5k"))
    # first conv 72; depthwise 9 * (8 + 16 + 24 + 24 + 32) = 936; pointwise 8*16 + 16*24 + 24*24 + 24*32 + 32*40
    # = 3,136 plus the head's 400; BN 2 * (8 + 16 + 24 + 24 + 32 + 40) = 288
    assert kinds == {"full kxk conv": 72, "depthwise conv": 936, "1x1 conv": 3_536, "normalization": 288, "linear": 0,
                     "other": 0}
    assert params_by_kind(get_model("first"))["linear"] == 9_216 * 128 + 128 + 128 * 10 + 10
    assert sum(kinds.values()) == 4_832
    plain = params_by_kind(get_model("assignment"))
    assert plain["depthwise conv"] == 0 and sum(plain.values()) == 13_816
    with pytest.raises(TypeError, match="torch.nn.Module"):
        params_by_kind("not a model")  # type: ignore[arg-type]
