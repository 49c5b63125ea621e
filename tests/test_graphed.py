"""The CUDA-graph loop: its step, run eagerly on the CPU, trains what `fit` trains; what it cannot record it refuses.

Recording and replaying need a CUDA device: benchmarks/gpu_check.sh runs `train final --graph` there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnist_lesson.config import Augment, Recipe, Speed, UsageError
from mnist_lesson.device import graph_on, seed_everything
from mnist_lesson.graphed import FunctionalSGD, fit_graphed
from mnist_lesson.loaders import InMemoryLoader, load_split
from mnist_lesson.models import get_model
from mnist_lesson.recipes import make_optimizer
from mnist_lesson.runs import train_recipe
from mnist_lesson.train import fit

CPU = torch.device("cpu")


def train_both(loop, recipe: Recipe, images: torch.Tensor, labels: torch.Tensor):
    seed_everything(0)
    model = get_model("final")
    train = InMemoryLoader(images, labels, recipe.batch_size, shuffle=True, augment=recipe.augment, seed=0)
    probe = InMemoryLoader(images[:256], labels[:256], 256)
    optimizer, schedule = make_optimizer(model, recipe, len(train), recipe.epochs)
    history = loop(model, train, {"test": probe}, optimizer, schedule, epochs=recipe.epochs, device=CPU,
                   progress=False)
    return model, history, schedule


@pytest.mark.parametrize("recipe", [
    Recipe(epochs=2, batch_size=64, lr=0.1, nesterov=True, schedule="onecycle", augment=Augment(7.0, 0.1)),
    Recipe(epochs=1, batch_size=64, lr=0.05, momentum=0.8, weight_decay=1e-3),
], ids=["final-recipe", "plain-momentum-weight-decay"])
def test_the_graphed_step_run_eagerly_trains_what_fit_trains(mnist_root: Path, recipe: Recipe) -> None:
    images, labels = load_split(True, mnist_root)
    # Batches of 64, 64 and 22 (the last runs without the graph). A few steps only: in a network with batch
    # normalization, a difference of one rounding (SGD's update here is torch's compiled form, lr * step subtracted,
    # not the fused add) grows over steps as fast as a change of 1e-7 in the initial weights does.
    images, labels = images[:150], labels[:150]
    model_a, history_a, schedule_a = train_both(fit, recipe, images, labels)
    model_b, history_b, schedule_b = train_both(fit_graphed, recipe, images, labels)
    assert schedule_a.lrs == schedule_b.lrs and schedule_a.momentums == schedule_b.momentums
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    for a, b in zip(history_a.epochs, history_b.epochs, strict=True):
        assert b["train_acc"] == a["train_acc"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


def test_functional_sgd_refuses_what_it_does_not_reproduce() -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UsageError, match="torch.optim.SGD with one parameter group"):
        FunctionalSGD(torch.optim.Adam(model.parameters()), CPU)
    with pytest.raises(UsageError, match="dampening"):
        FunctionalSGD(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5), CPU)


def test_recording_needs_cuda() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2), torch.nn.LogSoftmax(dim=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer_, schedule = make_optimizer(model, Recipe(), 1)
    with pytest.raises(UsageError, match="CUDA graphs need a CUDA device"):
        fit_graphed(model, [], {}, optimizer_, schedule, epochs=1, device=CPU, capture=True)
    del optimizer


def test_graph_settings_that_cannot_work_are_refused_or_named() -> None:
    with pytest.raises(UsageError, match="does not combine with compile or amp"):
        Speed(graph=True, compile=True)
    with pytest.raises(UsageError, match="weight average"):
        train_recipe("under8k", device=CPU, speed=Speed(graph=True), smoke=True)
    with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device"):
        assert graph_on(Speed(graph=True), CPU) is False
    assert graph_on(Speed(), torch.device("cuda")) is False


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_functional_sgd_steps_as_torch_sgd_does(nesterov: bool, weight_decay: float) -> None:
    torch.manual_seed(0)
    ours = [torch.randn(3, 4), torch.randn(5)]
    theirs = [p.clone().requires_grad_() for p in ours]
    optimizer = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    mirror = torch.optim.SGD([p.clone().requires_grad_() for p in ours], lr=0.1, momentum=0.9, nesterov=nesterov,
                             weight_decay=weight_decay)
    sgd = FunctionalSGD(mirror, CPU)
    sgd.params = ours  # the same start, updated in place by the functional form
    sgd.buffers = [torch.zeros_like(p) for p in ours]
    for lr, momentum in [(0.1, 0.9), (0.05, 0.85), (0.2, 0.95), (0.01, 0.9)]:  # rate and momentum change each step
        for group in (optimizer.param_groups[0], mirror.param_groups[0]):
            group["lr"], group["momentum"] = lr, momentum
        grads = [torch.randn_like(p) for p in ours]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        sgd.load()
        sgd.update([g.clone() for g in grads])
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
