"""The training loop: it learns, it measures correctly, its schedule is recorded, a diverging loss stops it."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_lesson.config import Recipe
from mnist_lesson.device import seed_everything
from mnist_lesson.loaders import InMemoryLoader, load_split
from mnist_lesson.models import get_model
from mnist_lesson.recipes import make_optimizer
from mnist_lesson.train import History, NonFiniteLoss, evaluate, fit

CPU = torch.device("cpu")


@pytest.fixture
def subset(mnist_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split(True, mnist_root)
    return images[:1024], labels[:1024]


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss(subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    seed_everything(0)
    model = get_model("assignment")
    train = InMemoryLoader(*subset, batch_size=64, shuffle=True)
    probe = InMemoryLoader(*subset, batch_size=512)
    loss_before, _ = evaluate(model, probe, CPU)
    optimizer, schedule = make_optimizer(model, Recipe(lr=0.05), len(train))
    history = fit(model, train, {"test": probe}, optimizer, schedule, epochs=2, device=CPU, progress=False)
    assert len(history.epochs) == 2
    assert history.epochs[-1]["test_loss"] < 0.7 * loss_before
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert len(schedule.lrs) == 2 * len(train)  # the schedule saw every step


def test_the_loop_is_short_and_reads_no_environment() -> None:
    """The loop is the lesson of notebook 00: the plain steps, in order, and no hidden switch."""
    source = inspect.getsource(fit)
    body = source[source.index('"""', source.index('"""') + 3) + 3:]
    steps = ["model.train()", "model(x)", "F.nll_loss", "optimizer.zero_grad()", "loss.backward()",
             "optimizer.step()", "schedule.step()", "evaluate("]
    positions = [body.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "environ" not in source and "smoke" not in source.lower()
    assert len([line for line in body.splitlines() if line.strip()]) <= 20


def test_evaluate_matches_a_count_by_hand() -> None:
    class AlwaysThree(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), 10)
            logits[:, 3] = 5.0
            return torch.log_softmax(logits, dim=1)

    labels = torch.tensor([3, 3, 1, 0, 3, 9, 3, 2])
    images = torch.zeros(8, 28, 28, dtype=torch.uint8)
    loss, acc = evaluate(AlwaysThree(), InMemoryLoader(images, labels, batch_size=3), CPU)
    assert acc == pytest.approx(50.0)
    p3 = torch.exp(torch.tensor(5.0)) / (torch.exp(torch.tensor(5.0)) + 9)
    p_other = 1 / (torch.exp(torch.tensor(5.0)) + 9)
    expected = -(4 * torch.log(p3) + 4 * torch.log(p_other)) / 8
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_history_round_trips_through_strict_json(tmp_path: Path, subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = get_model("assignment")
    loader = InMemoryLoader(*subset, batch_size=256)
    optimizer, schedule = make_optimizer(model, Recipe(), len(loader))
    history = fit(model, loader, {"test": loader, "val": loader}, optimizer, schedule, epochs=1, device=CPU,
                  progress=False)
    history.meta["model"] = "assignment"
    history.schedule = schedule.trace()
    history.save(tmp_path / "h.json")
    again = History.load(tmp_path / "h.json")
    assert again == history
    assert set(again.epochs[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss",
                                    "val_acc", "lr", "seconds"}
    with pytest.raises(KeyError, match="no figure 'val_accuracy'"):
        again.column("val_accuracy")


def test_history_refuses_to_write_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        History([{"epoch": 1, "train_loss": math.nan}]).save(tmp_path / "h.json")
    assert not (tmp_path / "h.json").exists() or json.loads((tmp_path / "h.json").read_text() or "{}") == {}


def test_onecycle_runs_its_full_schedule_and_records_rate_and_momentum(
        subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = get_model("assignment")
    train = InMemoryLoader(subset[0][:256], subset[1][:256], batch_size=64, shuffle=True)
    recipe = Recipe(epochs=3, lr=0.1, schedule="onecycle")
    optimizer, schedule = make_optimizer(model, recipe, len(train))
    history = fit(model, train, {"test": train}, optimizer, schedule, epochs=3, device=CPU, progress=False)
    assert schedule.scheduler.last_epoch == 3 * len(train)  # exactly the steps OneCycleLR was built for
    lrs = history.column("lr")
    assert lrs[0] > lrs[-1] and lrs[-1] < 0.01 * recipe.lr  # annealed to almost nothing by the last step
    assert max(schedule.lrs) <= recipe.lr
    # OneCycleLR cycles momentum against the rate: highest where the rate is lowest, and the reverse.
    peak = schedule.lrs.index(max(schedule.lrs))
    assert schedule.momentums[peak] == pytest.approx(0.85, abs=0.01) and schedule.momentums[0] == pytest.approx(0.95)
    trace = schedule.trace(max_points=5)
    assert trace["step"][0] == 1 and trace["step"][-1] == len(schedule.lrs) and len(trace["lr"]) == 5


def test_step_schedule_logs_the_rate_each_epoch_trained_with(subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = get_model("assignment")
    train = InMemoryLoader(subset[0][:128], subset[1][:128], batch_size=64)
    optimizer, schedule = make_optimizer(model, Recipe(lr=0.1, schedule="step", step_size=2, gamma=0.1), 2)
    history = fit(model, train, {"test": train}, optimizer, schedule, epochs=3, device=CPU, progress=False)
    assert history.column("lr") == pytest.approx([0.1, 0.1, 0.01])


@pytest.mark.slow
def test_a_diverging_loss_stops_the_run_with_its_finished_epochs(subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = get_model("first")
    train = InMemoryLoader(*subset, batch_size=64, shuffle=True)
    optimizer, schedule = make_optimizer(model, Recipe(lr=1e6), len(train))
    history = History()
    with pytest.raises(NonFiniteLoss, match="lower the learning rate"):
        fit(model, train, {"test": train}, optimizer, schedule, epochs=3, device=CPU, progress=False, history=history)
    assert all(math.isfinite(v) for stats in history.epochs for v in stats.values())
