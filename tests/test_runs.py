"""A run of a recipe: smoke mode is explicit, stops keep their epochs, runs record what made them, checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from mnist_lesson import device, runs, train
from mnist_lesson.config import GPU_EVAL_BATCH, SMOKE_ENV, SMOKE_LIMITS, Limits, Speed, UsageError, smoke_mode
from mnist_lesson.device import native_bf16, seed_everything
from mnist_lesson.files import code_version
from mnist_lesson.loaders import InMemoryLoader, load_split
from mnist_lesson.models import get_model
from mnist_lesson.recipes import LADDER_RECIPE, get_recipe
from mnist_lesson.runs import FirstBatches, TrainingStopped, load_checkpoint, save_checkpoint, train_recipe
from mnist_lesson.train import evaluate

CPU = torch.device("cpu")


@pytest.mark.slow
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


def test_train_recipe_stops_cleanly_and_keeps_finished_epochs(mnist_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first epoch: TrainingStopped carries that epoch and says where it stopped."""
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


@pytest.mark.slow
def test_runs_record_the_code_they_came_from(mnist_root: Path) -> None:
    _, history = train_recipe("assignment", device=CPU, root=mnist_root, progress=False, smoke=True)
    assert history.meta["code"] == code_version()
    assert code_version().startswith(("git ", "source sha256 "))
    assert history.meta["recipe"] == get_recipe("assignment").to_dict()


@pytest.mark.slow
def test_speed_options_change_time_not_results(mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating the whole test set in one batch gives the figures of batches of 1,000; amp asked for on a
    CPU without native bfloat16 trains in float32 exactly as without it; the options are recorded."""
    seed_everything(0)
    model = get_model("under8k")
    test = tuple(part[:3_000] for part in load_split(False, mnist_root))  # 3 batches of 1,000 against 1 of them all
    small = evaluate(model, InMemoryLoader(*test, batch_size=1000), CPU)
    whole = evaluate(model, InMemoryLoader(*test, batch_size=GPU_EVAL_BATCH), CPU)
    assert small[1] == whole[1] and small[0] == pytest.approx(whole[0], rel=1e-5)

    _, plain = train_recipe("under8k", device=CPU, seed=1, root=mnist_root, progress=False, smoke=True)
    monkeypatch.setattr(device, "native_bf16", lambda where: False)
    with pytest.warns(UserWarning, match="float32"):
        _, amp = train_recipe("under8k", device=CPU, seed=1, root=mnist_root, progress=False, smoke=True,
                              speed=Speed(amp=True, eval_batch_size=500))
    assert amp.meta["speed"] == {**Speed(eval_batch_size=500).to_dict(), "amp": False}
    assert amp.column("train_loss") == plain.column("train_loss")


@pytest.mark.slow
@pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_amp_on_a_cpu_with_native_bfloat16_trains_in_bfloat16(mnist_root: Path) -> None:
    _, plain = train_recipe("under5k", device=CPU, seed=0, root=mnist_root, progress=False, smoke=True)
    _, amp = train_recipe("under5k", device=CPU, seed=0, root=mnist_root, progress=False, smoke=True,
                          speed=Speed(amp=True))
    assert amp.meta["speed"]["amp"] is True
    assert amp.column("train_loss") != plain.column("train_loss")  # bfloat16 rounds differently
    assert amp.column("train_loss")[0] == pytest.approx(plain.column("train_loss")[0], rel=0.05)


def test_a_weight_average_is_evaluated_and_returned_when_the_recipe_keeps_one(mnist_root: Path) -> None:
    """With `ema`, the run evaluates and returns the moving average of the weights. A recipe without it (the
    default) is unchanged, so recorded recipes still match."""
    plain_recipe = LADDER_RECIPE  # without an average
    assert plain_recipe.ema == 0
    recipe = plain_recipe.with_overrides(ema=0.9)
    trained, history = train_recipe("under5k", recipe, device=CPU, root=mnist_root, progress=False, smoke=True)
    plain, _ = train_recipe("under5k", plain_recipe, device=CPU, root=mnist_root, progress=False, smoke=True)
    assert not all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), plain.state_dict().values(),
                                                     strict=True))
    assert plain_recipe.matches({k: v for k, v in plain_recipe.to_dict().items() if k not in ("ema", "warmup")})
    assert len(history.epochs) == 1
