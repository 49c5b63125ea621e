"""Results files: recording, summarizing, and the committed claims checked against the models they describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_lesson.models import LADDER, MODELS, count_parameters, get_model, get_recipe
from mnist_lesson.results import (
    LAST_EPOCHS,
    TARGET,
    describe_result,
    record_run,
    seed_claim,
    seeds_table,
    steady_seconds,
    step_summaries,
    summarize,
    summarize_seeds,
    trials_table,
)
from mnist_lesson.train import SMOKE_ENV, EpochStats, History

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def make_history(accs: list[float], params: int = 123) -> History:
    epochs = [EpochStats(i + 1, 0.1, acc + 0.5, 0.05, acc, 0.01, 2.0 + i) for i, acc in enumerate(accs)]
    return History(epochs, {"params": params, "device": "cpu (2 threads)", "smoke": False})


def test_record_and_summarize_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SMOKE_ENV)
    path = record_run("gap", make_history([98.0, 99.5, 99.1, 99.3, 99.2]), tmp_path)
    assert path == tmp_path / "gap.json"
    summary = summarize(path)
    assert (summary.model, summary.params, summary.epochs) == ("gap", 123, 5)
    assert summary.best_acc == 99.5 and summary.last_accs == (99.1, 99.3, 99.2) and summary.last_min == 99.1
    assert summary.seconds_per_epoch == pytest.approx(4.0)
    assert [s.model for s in step_summaries(tmp_path)] == ["gap"]


def test_smoke_runs_and_missing_folders_are_never_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SMOKE_ENV, "1")
    assert record_run("gap", make_history([99.0]), tmp_path) is None
    monkeypatch.delenv(SMOKE_ENV)
    assert record_run("gap", make_history([99.0]), tmp_path / "absent") is None
    assert list(tmp_path.iterdir()) == []


def test_describe_result_uses_the_last_epochs() -> None:
    text = describe_result(make_history([90.0, 99.6, 99.41, 99.42, 99.43]))
    assert "best 99.60%, last 3 epochs 99.41, 99.42, 99.43%" in text
    assert "+0.50 points" in text


def test_every_step_has_a_recorded_full_run_that_matches_its_model() -> None:
    summaries = step_summaries(RESULTS / "steps")
    assert [s.model for s in summaries] == [name for name in MODELS if name != "seed" and name not in LADDER]
    for summary in summaries:
        recorded = json.loads((RESULTS / "steps" / f"{summary.model}.json").read_text())["meta"]
        assert summary.params == count_parameters(get_model(summary.model))
        assert recorded["recipe"] == get_recipe(summary.model).to_dict(), f"{summary.model}: rerun its notebook"
        assert summary.epochs == get_recipe(summary.model).epochs and not recorded["smoke"]


def test_final_model_claim_holds_on_every_seed() -> None:
    """The course's claim, from the committed multi-seed file: < 20,000 parameters, at most 15 epochs, and
    every one of the last 3 epochs of each of seeds 0-4 at >= 99.40% test accuracy."""
    data = json.loads((RESULTS / "seeds_final.json").read_text())
    holds, lines = seed_claim(data)
    assert holds, "\n".join(lines)
    assert data["params"] == count_parameters(get_model("final")) < 20_000
    assert data["recipe"] == get_recipe("final").to_dict()
    assert sorted(run["seed"] for run in data["runs"]) == [0, 1, 2, 3, 4]
    for run in data["runs"]:
        assert len(run["test_acc"]) == get_recipe("final").epochs <= 15
        assert min(run["test_acc"][-LAST_EPOCHS:]) >= TARGET, f"seed {run['seed']}: {run['test_acc'][-LAST_EPOCHS:]}"


def write_seeds_file(path: Path, lasts: dict[int, list[float]], params: int = 4_000) -> Path:
    runs = [{"seed": seed, "device": "cpu (1 threads)", "seconds": 60.0, "test_acc": [98.0] * 12 + last,
             "train_acc": [99.0] * 15, "test_loss": [0.02] * 15} for seed, last in lasts.items()]
    path.write_text(json.dumps({"model": "tiny", "params": params, "recipe": {"epochs": 15}, "runs": runs}))
    return path


def test_seeds_summary_judges_every_last_epoch_of_every_seed(tmp_path: Path) -> None:
    path = write_seeds_file(tmp_path / "seeds_tiny.json", {0: [99.45, 99.41, 99.50], 1: [99.50, 99.39, 99.60]})
    summary = summarize_seeds(path)
    assert summary.seed_mins == {0: 99.41, 1: 99.39}
    assert summary.worst == 99.39 and summary.passing == 1 and not summary.holds
    table = seeds_table([summary])
    assert "| tiny | 4,000 | 15 | 1 of 2 | 99.39 | 99.41, 99.39 | cpu (1 threads) |" in table
    path = write_seeds_file(tmp_path / "seeds_tiny.json", {0: [99.40, 99.41, 99.50]})
    assert summarize_seeds(path).holds
    data = json.loads(path.read_text())
    data["runs"][0]["speed"] = {"amp": True, "compile": False, "eval_batch_size": None}
    path.write_text(json.dumps(data))
    assert summarize_seeds(path).model == "tiny (amp)"
    write_seeds_file(tmp_path / "seeds_none.json", {})
    with pytest.raises(ValueError, match="no runs yet"):
        summarize_seeds(tmp_path / "seeds_none.json")


def test_trials_table_and_steady_epoch_time(tmp_path: Path) -> None:
    trial = {"name": "t1", "class": "LadderNet", "spec": {"block1": [8]}, "recipe_changes": {"batch_size": 32},
             "seed": 0, "params": 1_234, "test_acc": [99.0, 99.41, 99.42, 99.43], "train_acc": [98.0, 99.25]}
    (tmp_path / "trials.jsonl").write_text(json.dumps(trial) + "\n")
    table = trials_table(tmp_path / "trials.jsonl")
    assert "| t1 | 1,234 | LadderNet(block1=[8]) | batch_size=32 | 0 | 99.41, 99.42, 99.43 | 99.25 |" in table
    assert steady_seconds([30.0, 10.0, 12.0, 11.0]) == 11.0  # the first epoch (compiling) is left out
    assert steady_seconds([5.0]) == 5.0


@pytest.mark.parametrize("name", sorted(LADDER))
def test_every_ladder_rung_was_verified_on_five_seeds(name: str) -> None:
    """Each rung's committed five-seed file matches the registered model and recipe (at most 15 epochs)."""
    data = json.loads((RESULTS / f"seeds_{name}.json").read_text())
    assert data["params"] == count_parameters(get_model(name)) < LADDER[name]
    assert data["recipe"] == get_recipe(name).to_dict() and get_recipe(name).epochs <= 15
    assert sorted(run["seed"] for run in data["runs"]) == [0, 1, 2, 3, 4]
    assert all(len(run["test_acc"]) == get_recipe(name).epochs for run in data["runs"])


@pytest.mark.parametrize("name", ["under8k", "under5k"])
def test_required_ladder_rungs_hold_the_claim_on_every_seed(name: str) -> None:
    holds, lines = seed_claim(json.loads((RESULTS / f"seeds_{name}.json").read_text()))
    assert holds, "\n".join(lines)


def test_ladder_plot_draws_every_rung_and_anchor(tmp_path: Path) -> None:
    from mnist_lesson.plots import plot_ladder
    from mnist_lesson.results import PUBLIC_ANCHORS

    held = summarize_seeds(write_seeds_file(tmp_path / "a.json", {0: [99.5, 99.45, 99.5], 1: [99.41, 99.5, 99.6]}))
    short = summarize_seeds(write_seeds_file(tmp_path / "b.json", {0: [99.3, 99.45, 99.5]}, params=3_000))
    fig = plot_ladder([held, short], anchors=PUBLIC_ANCHORS)
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.texts]
    assert labels == ["tiny (2/2 seeds)", "tiny (0/1 seeds)"]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert len(legend) == len(PUBLIC_ANCHORS) + 1 and "3,762, best epoch" in legend[-2]
    bars = [collection for collection in ax.collections if hasattr(collection, "get_segments")]
    assert [tuple(bar.get_segments()[0][:, 1]) for bar in bars] == [(99.41, 99.45), (99.3, 99.3)]


def trial_last3(name: str, seed: int) -> list[float]:
    """One recorded trial's last 3 test accuracies."""
    for line in (RESULTS / "ladder_trials.jsonl").read_text().splitlines():
        trial = json.loads(line)
        if trial["name"] == name and trial["seed"] == seed:
            return trial["test_acc"][-LAST_EPOCHS:]
    raise KeyError((name, seed))


def last3_range(name: str, seed: int) -> str:
    """The "low-high" of one trial's last 3 epochs, as the README quotes it."""
    last = trial_last3(name, seed)
    return f"{min(last):.2f}-{max(last):.2f}"


def test_readme_prose_figures_come_from_the_results_files() -> None:
    """The figures the README's ladder and speed prose quotes, recomputed from the files that measured them."""
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"plain net reached {last3_range('b32', 0)}" in readme
    assert f"4,832 parameters reached {last3_range('sepB-b32', 0)}" in readme
    assert f"from {last3_range('u8k-b64', 1)} to {last3_range('u8k-b32', 1)}" in readme
    assert f"did not help ({last3_range('sepB-b32-t05', 0)} against {last3_range('sepB-b32', 0)})" in readme
    assert f"({last3_range('p1', 0)})" in readme
    assert f"seed 2 then dipped to {min(trial_last3('u8k-b32', 2)):.2f}" in readme

    under5k = summarize_seeds(RESULTS / "seeds_under5k.json")
    assert under5k.worst == TARGET and "its worst epoch is exactly 99.40" in readme
    stretch = json.loads((RESULTS / "seeds_under3762.json").read_text())
    assert summarize_seeds(RESULTS / "seeds_under3762.json").passing == 0 and "short on every seed" in readme
    assert sum(run["test_acc"][-1] < TARGET for run in stretch["runs"]) == 3 and "on three seeds the final" in readme
    amp = summarize_seeds(RESULTS / "seeds_final_amp.json")
    seed4 = next(run["test_acc"] for run in json.loads((RESULTS / "seeds_final_amp.json").read_text())["runs"]
                 if run["seed"] == 4)
    assert amp.passing == 4 and amp.seed_mins[4] == seed4[12] == 99.38  # epoch 13 is index 12
    assert "on 4 of 5 seeds, and seed 4 dips to 99.38 in epoch 13" in readme
