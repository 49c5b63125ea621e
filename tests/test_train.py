"""The training loop and a run: it learns, it measures correctly, smoke mode is explicit, stops keep their epochs."""

from __future__ import annotations

import inspect
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_lesson.config import SMOKE_ENV, SMOKE_LIMITS, Limits, Recipe, Speed, UsageError, smoke_mode
from mnist_lesson.loaders import InMemoryLoader, load_split
from mnist_lesson.models import LADDER_RECIPE, get_model, get_recipe
from mnist_lesson.runs import (
    FirstBatches,
    TrainingStopped,
    code_version,
    eval_batch_for,
    load_checkpoint,
    make_optimizer,
    native_bf16,
    pick_device,
    runnable,
    save_checkpoint,
    seed_everything,
    train_recipe,
    use_amp,
)
from mnist_lesson.train import History, NonFiniteLoss, evaluate, fit

CPU = torch.device("cpu")


@pytest.fixture
def subset(mnist_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split(True, mnist_root)
    return images[:1024], labels[:1024]


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


def test_smoke_mode_is_resolved_where_a_run_starts(mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_recipe turns smoke mode into explicit limits: one epoch of a few batches; fit itself never asks."""
    monkeypatch.setenv(SMOKE_ENV, "1")
    _, history = train_recipe("assignment", device=CPU, root=mnist_root, progress=False)
    assert len(history.epochs) == 1 and history.meta["smoke"] is True
    assert len(history.schedule["lr"]) == SMOKE_LIMITS.train_batches
    monkeypatch.setenv(SMOKE_ENV, "0")
    _, explicit = train_recipe("assignment", get_recipe("assignment").with_overrides(epochs=1), device=CPU,
                               root=mnist_root, progress=False, smoke=True)
    assert explicit.meta["smoke"] is True and explicit.meta["epochs_planned"] == 1


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False),
                                                 ("false", False), ("no", False), ("", False), (" ", False)])
def test_smoke_switch_values(value: str, expected: bool) -> None:
    assert smoke_mode({SMOKE_ENV: value}) is expected
    assert smoke_mode({}) is False


@pytest.mark.parametrize("value", ["2", "on", "maybe", "0.5"])
def test_smoke_switch_refuses_what_it_does_not_know(value: str) -> None:
    with pytest.raises(UsageError, match="MNIST_LESSON_SMOKE"):
        smoke_mode({SMOKE_ENV: value})


def test_first_batches_limits_a_loader_and_its_length() -> None:
    loader = InMemoryLoader(torch.zeros(100, 28, 28, dtype=torch.uint8), torch.zeros(100, dtype=torch.long), 10)
    assert len(FirstBatches(loader, 3)) == 3 and len(list(FirstBatches(loader, 3))) == 3
    assert len(FirstBatches(loader, None)) == 10 == len(list(FirstBatches(loader, None)))
    assert len(FirstBatches(loader, 50)) == 10


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


@pytest.mark.parametrize(("schedule", "kind"), [("onecycle", "OneCycleLR"), ("step", "StepLR")])
def test_recipe_schedules(schedule: str, kind: str) -> None:
    model = get_model("assignment")
    optimizer, steps = make_optimizer(model, Recipe(schedule=schedule, lr=0.1, nesterov=True), 10)
    assert type(steps.scheduler).__name__ == kind
    assert optimizer.param_groups[0]["nesterov"] is True
    with pytest.raises(UsageError, match="unknown schedule"):
        Recipe(schedule="cosine")  # type: ignore[arg-type]


def test_checkpoints_round_trip_and_refuse_code(tmp_path: Path) -> None:
    model = get_model("assignment")
    save_checkpoint(model, tmp_path / "model.pt")
    fresh = load_checkpoint(get_model("assignment"), tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(),
                                                 strict=True))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return os.system, (f"touch {marker}",)

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"weight": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(get_model("assignment"), tmp_path / "evil.pt")
    assert not marker.exists()


def test_pick_device_names_the_alternatives() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    for bad in ("tpu", "cuda:x", "cuda:"):
        with pytest.raises(UsageError, match="unknown device"):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="not available on this machine; available: auto, cpu"):
            pick_device("cuda")


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


def test_a_diverging_loss_stops_the_run_with_its_finished_epochs(subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = get_model("first")
    train = InMemoryLoader(*subset, batch_size=64, shuffle=True)
    optimizer, schedule = make_optimizer(model, Recipe(lr=1e6), len(train))
    history = History()
    with pytest.raises(NonFiniteLoss, match="lower the learning rate"):
        fit(model, train, {"test": train}, optimizer, schedule, epochs=3, device=CPU, progress=False, history=history)
    assert all(math.isfinite(v) for stats in history.epochs for v in stats.values())


def test_train_recipe_stops_cleanly_and_keeps_finished_epochs(mnist_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first epoch: TrainingStopped carries that epoch and says where it stopped."""
    from mnist_lesson import runs, train

    calls = {"n": 0}
    original = train.evaluate

    def interrupt_in_second_epoch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", interrupt_in_second_epoch)
    monkeypatch.setattr(runs, "limits_for", lambda smoke: Limits(train_batches=3, eval_batches=1))  # short epochs
    recipe = get_recipe("assignment").with_overrides(epochs=3)
    with pytest.raises(TrainingStopped, match=r"interrupted \(during epoch 2 of 3; 1 finished\)") as stop:
        train_recipe("assignment", recipe, device=CPU, root=mnist_root, progress=False, smoke=False)
    assert len(stop.value.history.epochs) == 1 and stop.value.history.meta["stopped"].startswith("interrupted")


def test_runs_record_the_code_they_came_from(mnist_root: Path) -> None:
    _, history = train_recipe("assignment", device=CPU, root=mnist_root, progress=False, smoke=True)
    assert history.meta["code"] == code_version()
    assert code_version().startswith(("git ", "source sha256 "))
    assert history.meta["recipe"] == get_recipe("assignment").to_dict()


def test_speed_options_fall_back_cleanly_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_lesson import runs
    from mnist_lesson.config import GPU_EVAL_BATCH

    monkeypatch.setattr(runs, "native_bf16", lambda device: False)  # a CPU without AVX512-BF16 or AMX
    with pytest.warns(UserWarning, match="trains in float32 instead"):
        assert use_amp(CPU, True) is False
    assert use_amp(CPU, False) is False
    monkeypatch.setattr(runs, "native_bf16", lambda device: True)
    assert use_amp(CPU, True) is True
    monkeypatch.undo()
    assert native_bf16(torch.device("meta")) is False
    assert isinstance(native_bf16(CPU), bool)
    assert eval_batch_for(CPU, Speed()) == 1000
    assert eval_batch_for(torch.device("cuda"), Speed()) == GPU_EVAL_BATCH
    assert eval_batch_for(CPU, Speed(eval_batch_size=64)) == 64
    with pytest.raises(UsageError, match="eval_batch_size"):
        Speed(eval_batch_size=0)
    model = nn.Linear(2, 2)
    run, amp = runnable(model, Speed(channels_last=False), CPU)
    assert run is model and amp is False
    monkeypatch.delattr(torch, "compile")  # as on a torch too old to have it
    with pytest.warns(UserWarning, match="has no torch.compile"):
        assert runnable(model, Speed(compile=True, channels_last=False), CPU)[0] is model


def test_speed_options_change_time_not_results(mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating the whole test set in one batch gives the figures of batches of 1,000; amp asked for on a
    CPU without native bfloat16 trains in float32 exactly as without it; the options are recorded."""
    from mnist_lesson import runs
    from mnist_lesson.config import GPU_EVAL_BATCH

    seed_everything(0)
    model = get_model("under8k")
    test = load_split(False, mnist_root)
    small = evaluate(model, InMemoryLoader(*test, batch_size=1000), CPU)
    whole = evaluate(model, InMemoryLoader(*test, batch_size=GPU_EVAL_BATCH), CPU)
    assert small[1] == whole[1] and small[0] == pytest.approx(whole[0], rel=1e-5)

    _, plain = train_recipe("under8k", device=CPU, seed=1, root=mnist_root, progress=False, smoke=True)
    monkeypatch.setattr(runs, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="float32"):
        _, amp = train_recipe("under8k", device=CPU, seed=1, root=mnist_root, progress=False, smoke=True,
                              speed=Speed(amp=True, eval_batch_size=500))
    assert amp.meta["speed"] == {**Speed(eval_batch_size=500).to_dict(), "amp": False}
    assert amp.column("train_loss") == plain.column("train_loss")


@pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_amp_on_a_cpu_with_native_bfloat16_trains_in_bfloat16(mnist_root: Path) -> None:
    _, plain = train_recipe("under5k", device=CPU, seed=0, root=mnist_root, progress=False, smoke=True)
    _, amp = train_recipe("under5k", device=CPU, seed=0, root=mnist_root, progress=False, smoke=True,
                          speed=Speed(amp=True))
    assert amp.meta["speed"]["amp"] is True
    assert amp.column("train_loss") != plain.column("train_loss")  # bfloat16 rounds differently
    assert amp.column("train_loss")[0] == pytest.approx(plain.column("train_loss")[0], rel=0.05)


def test_a_weight_average_is_evaluated_and_returned_when_the_recipe_keeps_one(mnist_root: Path) -> None:
    """With `ema`, every optimizer step updates the average; eval mode runs the average; the returned model holds
    its weights. A recipe without it (the default) is unchanged, so recorded recipes still match."""
    from mnist_lesson.runs import WeightAverage

    plain_recipe = LADDER_RECIPE  # without an average
    assert plain_recipe.ema == 0
    recipe = plain_recipe.with_overrides(ema=0.9)
    trained, history = train_recipe("under5k", recipe, device=CPU, root=mnist_root, progress=False, smoke=True)
    plain, _ = train_recipe("under5k", plain_recipe, device=CPU, root=mnist_root, progress=False, smoke=True)
    assert not all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), plain.state_dict().values(),
                                                     strict=True))
    assert plain_recipe.matches({k: v for k, v in plain_recipe.to_dict().items() if k not in ("ema", "warmup")})
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    averaged = WeightAverage(model, model, optimizer, decay=0.5)
    start = model.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    # The first update copies the weights after step 1; the second averages them with step 2's: start - 1.5.
    torch.testing.assert_close(averaged.average.module.weight, start - 1.5)
    averaged.eval()
    torch.testing.assert_close(averaged(torch.ones(1, 2)), averaged.average.module(torch.ones(1, 2)))
    assert len(history.epochs) == 1
