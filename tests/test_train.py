"""The training loop: it learns, it measures correctly, smoke mode shrinks it, checkpoints are safe."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_lesson.config import Recipe
from mnist_lesson.loaders import InMemoryLoader, load_split
from mnist_lesson.models import get_model, get_recipe
from mnist_lesson.train import (
    SMOKE_ENV,
    SMOKE_TRAIN_BATCHES,
    History,
    evaluate,
    fit,
    load_checkpoint,
    make_optimizer,
    native_bf16,
    pick_device,
    save_checkpoint,
    seed_everything,
    smoke_mode,
)

CPU = torch.device("cpu")


@pytest.fixture
def subset(mnist_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split(True, mnist_root)
    return images[:1024], labels[:1024]


def test_a_few_training_steps_lower_the_loss(subset: tuple[torch.Tensor, torch.Tensor],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SMOKE_ENV)
    seed_everything(0)
    model = get_model("seed")
    train = InMemoryLoader(*subset, batch_size=64, shuffle=True)
    probe = InMemoryLoader(*subset, batch_size=512)
    loss_before, _ = evaluate(model, probe, CPU)
    optimizer, _, _ = make_optimizer(model, Recipe(lr=0.05), len(train))
    history = fit(model, train, probe, optimizer, epochs=2, device=CPU, progress=False)
    assert len(history.epochs) == 2
    assert history.epochs[-1].test_loss < 0.7 * loss_before
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss


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


def test_smoke_mode_runs_one_short_epoch(subset: tuple[torch.Tensor, torch.Tensor],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SMOKE_ENV, "1")
    assert smoke_mode()
    seen = []

    class Counting(InMemoryLoader):
        def __iter__(self):  # type: ignore[no-untyped-def]
            for batch in super().__iter__():
                seen.append(len(batch[1]))
                yield batch

    model = get_model("seed")
    train = Counting(*subset, batch_size=16)
    optimizer, _, _ = make_optimizer(model, Recipe(), len(train))
    history = fit(model, train, InMemoryLoader(*subset, batch_size=256), optimizer, epochs=5, device=CPU,
                  progress=False)
    assert len(history.epochs) == 1
    assert len(seen) == SMOKE_TRAIN_BATCHES
    monkeypatch.setenv(SMOKE_ENV, "0")
    assert not smoke_mode()


def test_history_round_trips_through_json(tmp_path: Path, subset: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = get_model("seed")
    loader = InMemoryLoader(*subset, batch_size=256)
    optimizer, _, _ = make_optimizer(model, Recipe(), len(loader))
    history = fit(model, loader, loader, optimizer, epochs=1, device=CPU, progress=False)
    history.meta["model"] = "seed"
    history.save(tmp_path / "h.json")
    again = History.load(tmp_path / "h.json")
    assert again == history
    assert set(vars(again.epochs[0])) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                          "seconds"}


@pytest.mark.parametrize(("schedule", "kind"), [("onecycle", "OneCycleLR"), ("step", "StepLR")])
def test_recipe_schedules(schedule: str, kind: str) -> None:
    model = get_model("seed")
    optimizer, scheduler, per_batch = make_optimizer(model, Recipe(schedule=schedule, lr=0.1, nesterov=True), 10)
    assert type(scheduler).__name__ == kind
    assert per_batch == (schedule == "onecycle")
    assert optimizer.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError, match="unknown schedule"):
        make_optimizer(model, Recipe(schedule="cosine"), 10)  # type: ignore[arg-type]


def test_checkpoints_round_trip_and_refuse_code(tmp_path: Path) -> None:
    model = get_model("seed")
    save_checkpoint(model, tmp_path / "model.pt")
    fresh = load_checkpoint(get_model("seed"), tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(),
                                                 strict=True))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return os.system, (f"touch {marker}",)

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"weight": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(get_model("seed"), tmp_path / "evil.pt")
    assert not marker.exists()


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    for bad in ("tpu", "cuda:x", "cuda:"):
        with pytest.raises(ValueError, match="unknown device"):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")


def test_onecycle_runs_its_full_schedule_and_logs_the_rate_used(subset: tuple[torch.Tensor, torch.Tensor],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SMOKE_ENV)
    model = get_model("seed")
    train = InMemoryLoader(subset[0][:256], subset[1][:256], batch_size=64, shuffle=True)
    recipe = Recipe(epochs=3, lr=0.1, schedule="onecycle")
    optimizer, scheduler, per_batch = make_optimizer(model, recipe, len(train))
    history = fit(model, train, train, optimizer, epochs=3, device=CPU, scheduler=scheduler,
                  scheduler_per_batch=per_batch, progress=False)
    assert scheduler.last_epoch == 3 * len(train)  # exactly the steps OneCycleLR was built for
    lrs = history.column("lr")
    assert lrs[0] > lrs[-1] and lrs[-1] < 0.01 * recipe.lr  # annealed to almost nothing by the last step
    assert max(lrs) <= recipe.lr


def test_step_schedule_logs_the_rate_each_epoch_trained_with(subset: tuple[torch.Tensor, torch.Tensor],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SMOKE_ENV)
    model = get_model("seed")
    train = InMemoryLoader(subset[0][:128], subset[1][:128], batch_size=64)
    optimizer, scheduler, per_batch = make_optimizer(model, Recipe(lr=0.1, schedule="step", step_size=2, gamma=0.1), 2)
    history = fit(model, train, train, optimizer, epochs=3, device=CPU, scheduler=scheduler,
                  scheduler_per_batch=per_batch, progress=False)
    assert history.column("lr") == pytest.approx([0.1, 0.1, 0.01])


def test_speed_options_fall_back_cleanly_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_lesson import train
    from mnist_lesson.config import GPU_EVAL_BATCH, Speed
    from mnist_lesson.train import eval_batch_for, maybe_compile, use_amp

    monkeypatch.setattr(train, "native_bf16", lambda device: False)  # a CPU without AVX512-BF16 or AMX
    with pytest.warns(UserWarning, match="trains in float32 instead"):
        assert use_amp(CPU, True) is False
    assert use_amp(CPU, False) is False
    monkeypatch.setattr(train, "native_bf16", lambda device: True)
    assert use_amp(CPU, True) is True
    monkeypatch.undo()
    assert train.native_bf16(torch.device("meta")) is False
    assert isinstance(train.native_bf16(CPU), bool)
    recipe = Recipe(eval_batch_size=500)
    assert eval_batch_for(CPU, recipe, Speed()) == 500
    assert eval_batch_for(torch.device("cuda"), recipe, Speed()) == GPU_EVAL_BATCH
    assert eval_batch_for(CPU, recipe, Speed(eval_batch_size=64)) == 64
    with pytest.raises(ValueError, match="positive integer"):
        eval_batch_for(CPU, recipe, Speed(eval_batch_size=0))
    model = nn.Linear(2, 2)
    assert maybe_compile(model, False) is model
    monkeypatch.delattr(torch, "compile")  # as on a torch too old to have it
    with pytest.warns(UserWarning, match="has no torch.compile"):
        assert maybe_compile(model, True) is model


def test_speed_options_change_time_not_results(mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating the whole test set in one batch gives the figures of batches of 1,000; amp asked for on a
    CPU without native bfloat16 trains in float32 exactly as without it; the options are recorded."""
    from mnist_lesson import train
    from mnist_lesson.config import GPU_EVAL_BATCH, Speed
    from mnist_lesson.train import train_recipe

    seed_everything(0)
    model = get_model("under8k")
    test = load_split(False, mnist_root)
    small = evaluate(model, InMemoryLoader(*test, batch_size=1000), CPU)
    whole = evaluate(model, InMemoryLoader(*test, batch_size=GPU_EVAL_BATCH), CPU)
    assert small[1] == whole[1] and small[0] == pytest.approx(whole[0], rel=1e-5)

    recipe = get_recipe("under8k")
    _, plain = train_recipe(lambda: get_model("under8k"), recipe, device=CPU, seed=1, root=mnist_root,
                            progress=False)
    monkeypatch.setattr(train, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="float32"):
        _, amp = train_recipe(lambda: get_model("under8k"), recipe, device=CPU, seed=1, root=mnist_root,
                              progress=False, speed=Speed(amp=True, eval_batch_size=500))
    assert amp.meta["speed"] == {"amp": False, "compile": False, "eval_batch_size": 500}
    assert amp.column("train_loss") == plain.column("train_loss")


@pytest.mark.skipif(not native_bf16(CPU),
                    reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_amp_on_a_cpu_with_native_bfloat16_trains_in_bfloat16(mnist_root: Path) -> None:
    from mnist_lesson.config import Speed
    from mnist_lesson.train import train_recipe

    recipe = get_recipe("under5k")
    _, plain = train_recipe(lambda: get_model("under5k"), recipe, device=CPU, seed=0, root=mnist_root,
                            progress=False)
    _, amp = train_recipe(lambda: get_model("under5k"), recipe, device=CPU, seed=0, root=mnist_root,
                          progress=False, speed=Speed(amp=True))
    assert amp.meta["speed"]["amp"] is True
    assert amp.column("train_loss") != plain.column("train_loss")  # bfloat16 rounds differently
    assert amp.column("train_loss")[0] == pytest.approx(plain.column("train_loss")[0], rel=0.05)
