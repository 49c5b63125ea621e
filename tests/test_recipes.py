"""The recipes and what a recipe becomes: every model's recipe in one table, the optimizer and schedule, the
weight average."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist_lesson.config import Augment, Recipe, UsageError
from mnist_lesson.models import MODELS, get_model
from mnist_lesson.recipes import (
    ABLATION_AUGMENT,
    ABLATION_ONECYCLE,
    FINAL_RECIPE,
    LADDER_EMA_RECIPE,
    LADDER_RECIPE,
    RECIPES,
    STEP_RECIPE,
    UNDER5K_RECIPE,
    WeightAverage,
    get_recipe,
    make_optimizer,
)

CPU = torch.device("cpu")


def test_every_registered_model_has_its_recipe_in_one_table() -> None:
    assert list(RECIPES) == list(MODELS)  # the same names, in the same order (`python -m mnist_lesson list`)
    assert all(isinstance(recipe, Recipe) and get_recipe(name) is recipe for name, recipe in RECIPES.items())


def test_assignment_recipe_is_the_assignments() -> None:
    recipe = get_recipe("assignment")
    assert (recipe.lr, recipe.momentum, recipe.batch_size, recipe.schedule) == (0.01, 0.9, 128, "constant")


def test_an_unknown_model_has_no_recipe_and_the_error_names_the_registered_ones() -> None:
    with pytest.raises(UsageError, match="no model named 'no-such-model'; registered models: assignment, first"):
        get_recipe("no-such-model")


def test_the_studies_pieces_add_up_to_the_recipes_they_lead_to() -> None:
    """The ablation's last step before the final model trains with the final recipe; the ladder's first lever adds
    only the weight average to the ladder recipe."""
    assert STEP_RECIPE.with_overrides(augment=ABLATION_AUGMENT, **ABLATION_ONECYCLE, batch_size=64,
                                      epochs=15) == FINAL_RECIPE
    assert ABLATION_AUGMENT == Augment(rotation=7.0, shift=0.1)
    assert LADDER_EMA_RECIPE.changes_from(LADDER_RECIPE) == ["ema=0.999"]


def test_a_recipe_describes_itself_by_the_fields_that_act() -> None:
    assert FINAL_RECIPE.acting_fields() == {
        "epochs": 15, "batch_size": 64, "lr": 0.1, "nesterov": True, "schedule": "onecycle", "warmup": 0.3,
        "augment.rotation": 7.0, "augment.shift": 0.1}
    assert UNDER5K_RECIPE.acting_fields()["ema"] == 0.999 and "ema" not in LADDER_RECIPE.acting_fields()
    assert get_recipe("assignment").describe() == "epochs=19, batch_size=128, lr=0.01, momentum=0.9, schedule=constant"
    step = Recipe(schedule="step", weight_decay=1e-4)
    assert step.describe() == ("epochs=15, batch_size=128, lr=0.01, momentum=0.9, weight_decay=0.0001, schedule=step, "
                               "step_size=6, gamma=0.1")
    assert FINAL_RECIPE.describe().endswith("; momentum cycled between 0.85 and 0.95 by one-cycle")


@pytest.mark.parametrize("schedule", ["constant", "onecycle", "step"])
def test_the_fields_a_description_leaves_out_change_nothing_in_training(schedule: str) -> None:
    """Each field `acting_fields` leaves out, changed, gives the same rates and momenta step after step (the
    optimizer and schedule as torch runs them are the reference)."""
    base = Recipe(schedule=schedule, lr=0.1)
    shown = base.acting_fields()
    others = {"momentum": 0.5, "step_size": 2, "gamma": 0.5, "warmup": 0.6}

    def trace(recipe: Recipe) -> tuple[list[float], list[float | None]]:
        optimizer, steps = make_optimizer(nn.Linear(2, 1), recipe, steps_per_epoch=5, epochs=8)
        for _ in range(40):  # past the step schedule's first decay (6 epochs of 5 steps)
            optimizer.step()
            steps.step()
        return steps.lrs, steps.momentums

    for name, value in others.items():
        changed = trace(base.with_overrides(**{name: value})) != trace(base)
        assert changed == (name in shown), f"{name} under {schedule}"


def test_a_settling_cycle_ends_early_and_holds_its_final_rate() -> None:
    """settle=2 of 5 epochs: the rates of the first 3 epochs are those of a 3-epoch one-cycle, step for step, and the
    last 2 epochs hold that cycle's final rate and momentum."""
    def trace(recipe: Recipe, epochs: int) -> tuple[list[float], list[float | None]]:
        optimizer, steps = make_optimizer(nn.Linear(2, 1), recipe, steps_per_epoch=4, epochs=epochs)
        for _ in range(4 * epochs):
            optimizer.step()
            steps.step()
        return steps.lrs, steps.momentums

    cycle = Recipe(schedule="onecycle", lr=0.1)
    lrs, momentums = trace(cycle.with_overrides(settle=2), epochs=5)
    short_lrs, short_momentums = trace(cycle, epochs=3)
    assert lrs[:12] == short_lrs and momentums[:12] == short_momentums
    assert lrs[12:] == [short_lrs[-1]] * 8 and momentums[12:] == [short_momentums[-1]] * 8
    assert short_lrs[-1] < 1e-6  # one-cycle ends at lr / (25 * 1e4)
    assert cycle.with_overrides(settle=2).describe().startswith("epochs=15, batch_size=128, lr=0.1, schedule=onecycle,"
                                                                " warmup=0.3, settle=2")
    assert "settle" not in cycle.acting_fields()
    shortened, _ = trace(cycle.with_overrides(settle=3), epochs=2)  # a run shorter than its settling (smoke tests)
    assert shortened[:4] == trace(cycle, epochs=1)[0] and shortened[4:] == [shortened[3]] * 4
    with pytest.raises(UsageError, match="settle=2 needs schedule='onecycle'"):
        Recipe(settle=2)
    with pytest.raises(UsageError, match="fewer settling epochs than epochs"):
        cycle.with_overrides(settle=15)


@pytest.mark.parametrize(("schedule", "kind"), [("onecycle", "OneCycleLR"), ("step", "StepLR")])
def test_recipe_schedules(schedule: str, kind: str) -> None:
    model = get_model("assignment")
    optimizer, steps = make_optimizer(model, Recipe(schedule=schedule, lr=0.1, nesterov=True), 10)
    assert type(steps.scheduler).__name__ == kind
    assert optimizer.param_groups[0]["nesterov"] is True
    with pytest.raises(UsageError, match="unknown schedule"):
        Recipe(schedule="cosine")  # type: ignore[arg-type]


def test_the_weight_average_follows_every_optimizer_step_and_is_evaluated_in_eval_mode() -> None:
    """Every optimizer step updates the average (through an optimizer hook); eval mode runs the average."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    averaged = WeightAverage(model, model, optimizer, decay=0.5)
    start = model.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    # The first update copies the weights after step 1; the second averages them with step 2's: start - 1.5.
    torch.testing.assert_close(averaged.average.weight, start - 1.5)
    averaged.eval()
    torch.testing.assert_close(averaged(torch.ones(1, 2)), averaged.average(torch.ones(1, 2)))


@pytest.mark.parametrize("decay", [UNDER5K_RECIPE.ema, 0.5])
def test_the_weight_average_has_the_numbers_of_torchs_averaged_model(decay: float) -> None:
    """After every step, the averaged weights and buffers (batch normalization's statistics and step counts) equal
    bit for bit those of AveragedModel with torch's EMA update and use_buffers=True, which the average replaced."""
    torch.manual_seed(0)
    model = get_model("under5k")
    optimizer, _ = make_optimizer(model, UNDER5K_RECIPE, steps_per_epoch=10)
    ours = WeightAverage(model, model, optimizer, decay)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    optimizer.register_step_post_hook(lambda *args: reference.update_parameters(model))
    for _ in range(6):
        x, y = torch.randn(32, 1, 28, 28), torch.randint(10, (32,))
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        optimizer.step()
        expected = reference.module.state_dict()
        for name, tensor in ours.average.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    assert ours.average.state_dict().keys() == expected.keys()
    assert not torch.equal(next(ours.average.parameters()), next(model.parameters()))  # an average, not the model


@pytest.mark.parametrize("name", ["final", "under5k"])
def test_foreach_sgd_takes_the_same_steps_bit_for_bit(name: str) -> None:
    """The optimizer updates every parameter in one call (fewer operations a step); on the CPU its numbers are those
    of one call per parameter, exactly, over steps of the recipe's schedule."""
    recipe = get_recipe(name)
    torch.manual_seed(0)
    start = get_model(name)
    states = []
    for foreach in (False, True):
        model = copy.deepcopy(start)
        optimizer, schedule = make_optimizer(model, recipe, steps_per_epoch=10, foreach=foreach)
        assert optimizer.defaults["foreach"] is foreach
        generator = torch.Generator().manual_seed(1)
        for step in range(12):
            x, y = torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
            torch.manual_seed(step)  # the same dropout masks both times
            loss = F.nll_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        states.append(model.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert make_optimizer(start, recipe, 10)[0].defaults["foreach"] is True  # the default
