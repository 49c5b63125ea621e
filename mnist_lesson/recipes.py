"""Every recipe of the course in one place: each registered model's default recipe (`RECIPES`), the pieces the
design studies vary, and how a recipe becomes an optimizer, a schedule and a weight average.

A recipe says what is learned (`config.Recipe`); `models.py` registers every model with its entry here, and
`python -m mnist_lesson list` prints them all. Introduced in notebook 00.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from mnist_lesson.config import Augment, Recipe, UsageError
from mnist_lesson.device import Autocast
from mnist_lesson.train import Schedule

# The assignment trained through torchvision's DataLoader: `--data dataloader` repeats that exactly.
ASSIGNMENT_RECIPE = Recipe(epochs=19, batch_size=128, lr=0.01, momentum=0.9)

# --- the notebook series: one model per step --------------------------------------------------------

FIRST_RECIPE = Recipe(epochs=1, batch_size=128, lr=0.01, momentum=0.9)
STEP_RECIPE = Recipe(epochs=8, batch_size=128, lr=0.01, momentum=0.9)
FINAL_RECIPE = Recipe(epochs=15, batch_size=64, lr=0.1, momentum=0.9, nesterov=True, schedule="onecycle",
                      augment=Augment(rotation=7.0, shift=0.1))

# --- notebook 08: the parameter ladder ------------------------------------------------------------------

# The ladder trains like the final model, but with batches of 32: twice the updates in the same 15 epochs.
LADDER_RECIPE = FINAL_RECIPE.with_overrides(batch_size=32)


# under8k fell short on 1 of 10 seeds with the ladder recipe (a one-epoch dip). Its recipe is the one its lever
# study chose on the validation split (the study "ladder8k" in mnist_lesson.studies, shown in notebook 09), then
# verified on seeds 0-9.
UNDER8K_RECIPE = LADDER_RECIPE.with_overrides(ema=0.999)

# under5k fell short on 2 of 10 seeds with the ladder recipe. Its recipe is the one the lever study chose on the
# validation split (the study "ladder5k" in mnist_lesson.studies, shown in notebook 09), then verified on seeds
# 0-9.
UNDER5K_RECIPE = LADDER_RECIPE.with_overrides(ema=0.999, augment=Augment(rotation=7.0, shift=0.05))

# under3762 fell short on 5 of 5 seeds with the ladder recipe, on a network of 3,736 parameters (8, 12, 18 channels
# before the pool, 18, 28, 40 after) and an older training loop. Its lever study ("ladder3762" in mnist_lesson.studies,
# shown in notebook 09) chose, on the validation split, the rungs' recipe (under5k's) on a network with its channels
# earlier (models.under3762_net); then verified on seeds 0-9 and 10-19.
UNDER3762_RECIPE = UNDER5K_RECIPE

# The sizes below the stretch rung (issue 26, models.SMALLER_SIZES) keep its recipe: only the network shrinks.
SMALLER_RECIPE = UNDER3762_RECIPE

# Every registered model (mnist_lesson.models.MODELS, in the same order) -> the recipe it trains with by default.
RECIPES: dict[str, Recipe] = {
    "assignment": ASSIGNMENT_RECIPE,
    "first": FIRST_RECIPE,
    "skeleton": STEP_RECIPE,
    "transitions": STEP_RECIPE,
    "batchnorm": STEP_RECIPE,
    "dropout": STEP_RECIPE,
    "gap": STEP_RECIPE,
    "final": FINAL_RECIPE,
    "under8k": UNDER8K_RECIPE,
    "under5k": UNDER5K_RECIPE,
    "under3762": UNDER3762_RECIPE,
    "under3000": SMALLER_RECIPE,
    "under2500": SMALLER_RECIPE,
    "under2100": SMALLER_RECIPE,
}


def get_recipe(name: str) -> Recipe:
    """Return the default training recipe of the registered model `name`."""
    if name not in RECIPES:
        raise UsageError(f"no model named {name!r}; registered models: {', '.join(RECIPES)}")
    return RECIPES[name]


# --- what the design studies vary (mnist_lesson.studies) ----------------------------------------------------

# The ablation (notebook 07) adds the final recipe's changes to the step recipe one at a time; these two are spelled
# out here rather than read off FINAL_RECIPE, so that changing the final recipe never changes the ablation's designs.
ABLATION_AUGMENT = Augment(rotation=7.0, shift=0.1)  # rotate up to 7 degrees, shift up to 10%
ABLATION_ONECYCLE = dict(lr=0.1, nesterov=True, schedule="onecycle")  # changes: one-cycle to lr 0.1, Nesterov

# The ladder's lever studies (notebook 09): the first lever of both rungs evaluates a moving average of the weights.
LADDER_EMA_RECIPE = LADDER_RECIPE.with_overrides(ema=0.999)


# --- a recipe turned into the pieces of a run ---------------------------------------------------------------


def make_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int, epochs: int | None = None, *,
                   foreach: bool = True) -> tuple[torch.optim.Optimizer, Schedule]:
    """Return the SGD optimizer of `recipe` and its schedule, stepped once per batch for `epochs` epochs.

    `foreach` updates every parameter in one call (torch's default on a GPU; on a CPU the numbers are the same, bit
    for bit, as one call per parameter, which `foreach=False` makes)."""
    epochs = recipe.epochs if epochs is None else epochs
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay, foreach=foreach)
    if recipe.schedule == "onecycle":
        # With `settle`, the cycle ends that many epochs early and its final rate holds to the end of the run (a run
        # shortened below that, as in smoke tests, still cycles over its first epoch).
        settle = min(recipe.settle, epochs - 1)
        cycle = (epochs - settle) * steps_per_epoch
        return optimizer, Schedule(optimizer, torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=cycle, pct_start=recipe.warmup),
            hold_after=cycle - 1 if settle else None)
    if recipe.schedule == "step":
        return optimizer, Schedule(optimizer, torch.optim.lr_scheduler.StepLR(
            optimizer, recipe.step_size * steps_per_epoch, recipe.gamma))
    return optimizer, Schedule(optimizer)


class WeightAverage(nn.Module):
    """A model in training plus an exponential moving average of its weights and buffers, evaluated in its place.

    In train mode it runs the model being trained; in eval mode, the average (`average`, a copy of the model).
    The average follows every optimizer step through an optimizer hook, so the training loop stays exactly as it
    is. Its numbers are those of torch's `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True)`: the first step copies the weights, every later one blends them in with torch's own
    update. Only the count of steps differs: `AveragedModel` keeps it in a tensor and reads it twice a step,
    which on a GPU makes the host wait for the device; here it is a plain number.
    """

    def __init__(self, run: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, decay: float,
                 amp_device: str | None = None) -> None:
        super().__init__()
        self.run, self.model = run, model
        self.average = copy.deepcopy(model)
        self.evaluated = Autocast(self.average, amp_device) if amp_device else self.average
        self.blend = get_ema_multi_avg_fn(decay)  # in place: average = lerp(average, model, 1 - decay)
        self.updates = 0  # steps averaged so far, counted on the host
        optimizer.register_step_post_hook(lambda *args: self.update())

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights and buffers into the average: a copy at the first step, then a blend."""
        averaged = [*self.average.parameters(), *self.average.buffers()]
        current = [*self.model.parameters(), *self.model.buffers()]  # no detach needed: no gradients here
        if self.updates == 0:
            for mean, now in zip(averaged, current, strict=True):
                mean.copy_(now)
        else:
            # One blend per dtype, as AveragedModel groups them: floats in one foreach call; integer buffers
            # (batch normalization's step counts) blended one by one and rounded down, as torch does.
            groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for mean, now in zip(averaged, current, strict=True):
                means, nows = groups.setdefault(mean.dtype, ([], []))
                means.append(mean)
                nows.append(now)
            for means, nows in groups.values():
                self.blend(means, nows, self.updates)
        self.updates += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x) if self.training else self.evaluated(x)
