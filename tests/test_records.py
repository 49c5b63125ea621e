"""The recorded evidence: recording, reading and summarizing every format, and the committed claims checked against
the models they describe."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mnist_lesson import records
from mnist_lesson.budget import count_parameters
from mnist_lesson.config import BUDGET, CLAIM_SEEDS, LAST_EPOCHS, MAX_EPOCHS, TARGET, Augment, Recipe
from mnist_lesson.models import LADDER, MODELS, SMALLER_SIZES, get_model
from mnist_lesson.recipes import get_recipe
from mnist_lesson.records import (
    PUBLIC_ANCHORS,
    StaleStudyError,
    claim_holds,
    describe_result,
    evidence,
    find_trial,
    read_grading_times,
    read_notebook_times,
    read_seeds,
    read_speed,
    read_step_run,
    read_trials,
    record_grading_times,
    record_notebook_time,
    record_run,
    seeds_path,
    stale_designs,
    steady_seconds,
    step_summaries,
    summarize_seeds,
    summarize_step_run,
    summarize_study,
)
from mnist_lesson.studies import STANDARD_THREADS, STUDIES, Design, get_design
from mnist_lesson.tables import (
    grading_table,
    notebook_times_table,
    seed_groups_table,
    seed_runs_table,
    seeds_table,
    speed_table,
    trials_table,
)
from mnist_lesson.train import History


def make_history(accs: list[float], params: int = 123) -> History:
    epochs = [{"epoch": i + 1, "train_loss": 0.1, "train_acc": acc + 0.5, "test_loss": 0.05, "test_acc": acc,
               "lr": 0.01, "seconds": 2.0 + i} for i, acc in enumerate(accs)]
    return History(epochs, {"params": params, "device": "cpu (2 threads)", "smoke": False})


def test_record_and_summarize_a_run(tmp_path: Path) -> None:
    path = record_run("gap", make_history([98.0, 99.5, 99.1, 99.3, 99.2]), tmp_path)
    assert path == tmp_path / "gap.json"
    summary = summarize_step_run(path)
    assert (summary.model, summary.params, summary.epochs) == ("gap", 123, 5)
    assert summary.best_acc == 99.5 and summary.last_accs == (99.1, 99.3, 99.2) and summary.last_min == 99.1
    assert summary.seconds_per_epoch == pytest.approx(4.0)
    assert [s.model for s in step_summaries(tmp_path)] == ["gap"]


def test_smoke_runs_and_runs_outside_a_checkout_are_never_recorded(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = make_history([99.0])
    smoke.meta["smoke"] = True
    assert record_run("gap", smoke, tmp_path) is None
    assert record_run("gap", make_history([99.0]), tmp_path / "absent") is None
    monkeypatch.setattr(records, "in_checkout", lambda: False)  # a notebook opened alone in Colab
    assert record_run("gap", make_history([99.0]), tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_describe_result_uses_the_last_epochs_and_gives_the_verdict() -> None:
    text = describe_result(make_history([90.0, 99.6, 99.41, 99.42, 99.43]))
    assert "test accuracy: best 99.60%, last 3 epochs 99.41, 99.42, 99.43%" in text
    assert "+0.50 points" in text and text.endswith(": yes")
    assert describe_result(make_history([99.6, 99.39, 99.5])).endswith(": no")


def test_the_claim_is_judged_on_every_one_of_the_last_epochs() -> None:
    assert claim_holds([90.0, TARGET, TARGET + 0.1, TARGET])
    assert not claim_holds([99.9, 99.9, TARGET - 0.01, 99.9])  # one dip in the last epochs is enough
    assert not claim_holds([99.9] * (LAST_EPOCHS - 1))  # too short to judge


def test_every_step_has_a_recorded_full_run_that_matches_its_model() -> None:
    summaries = step_summaries()
    steps = [name for name in MODELS if name != "assignment" and name not in {**LADDER, **SMALLER_SIZES}]
    assert [s.model for s in summaries] == steps
    for summary in summaries:
        recorded = read_step_run(evidence("steps", f"{summary.model}.json")).meta
        assert summary.params == count_parameters(get_model(summary.model))
        assert get_recipe(summary.model).matches(recorded["recipe"]), f"{summary.model}: rerun its notebook"
        assert summary.epochs == get_recipe(summary.model).epochs and not recorded["smoke"]


def test_recorded_recipes_survive_a_new_defaulted_field() -> None:
    """A file written before a field existed still matches while that field is at its default; older spellings
    (rotate_degrees, translate) and execution knobs recorded on recipes (data, channels_last) are understood."""
    final = get_recipe("final")
    recorded = final.to_dict()
    del recorded["weight_decay"]  # as if weight_decay had been added after the file was written
    assert final.matches(recorded)
    assert not final.with_overrides(weight_decay=1e-4).matches(recorded)
    legacy = {**{k: v for k, v in final.to_dict().items() if k != "augment"}, "rotate_degrees": 7.0,
              "translate": 0.1, "data": "memory", "eval_batch_size": 1000, "channels_last": True}
    assert Recipe.from_dict(legacy) == final and final.augment == Augment(7.0, 0.1)
    assert not final.matches({**recorded, "a_field_from_the_future": 1})


def test_final_model_claim_holds_on_every_seed() -> None:
    """The course's claim, from the committed multi-seed file: < 20,000 parameters, at most 15 epochs, and
    every one of the last 3 epochs of every recorded seed (0-4 at least, of the claim's 0-9) at >= 99.40%."""
    seeds = read_seeds(seeds_path("final"))
    summary = summarize_seeds(seeds_path("final"))
    assert summary.holds, "\n".join(summary.lines())
    assert seeds.params == count_parameters(get_model("final")) < BUDGET
    assert get_recipe("final").matches(seeds.recipe)
    assert set(range(5)) <= {run.seed for run in seeds.runs} <= set(CLAIM_SEEDS) | set(range(10, 20))
    assert all(len(run.test_acc) == get_recipe("final").epochs <= MAX_EPOCHS for run in seeds.runs)


def write_seeds_file(path: Path, lasts: dict[int, list[float]], params: int = 4_000) -> Path:
    runs = [{"seed": seed, "device": "cpu (1 threads)", "seconds": 60.0, "test_acc": [98.0] * 12 + last,
             "train_acc": [99.0] * 15, "test_loss": [0.02] * 15} for seed, last in lasts.items()]
    path.write_text(json.dumps({"model": "tiny", "params": params, "recipe": {"epochs": 15}, "runs": runs}))
    return path


def test_a_seeds_file_of_another_recipe_is_labelled_with_what_differs(tmp_path: Path) -> None:
    """A registered model's file recorded with an earlier recipe says how that recipe differs from today's, and one
    recorded with an earlier network says so."""
    path = write_seeds_file(tmp_path / "seeds_old.json", {0: [99.45, 99.41, 99.50]})
    data = json.loads(path.read_text())
    data["model"], data["params"] = "final", count_parameters(get_model("final"))
    data["recipe"] = get_recipe("final").with_overrides(batch_size=128, augment=Augment(rotation=7.0)).to_dict()
    path.write_text(json.dumps(data))
    assert summarize_seeds(path).model == "final (recipe with batch_size=128, augment.shift=0)"
    data["recipe"] = get_recipe("final").to_dict()
    path.write_text(json.dumps(data))
    assert summarize_seeds(path).model == "final"
    data["params"] = 3_000  # a network the name no longer builds
    path.write_text(json.dumps(data))
    assert summarize_seeds(path).model == "final (an earlier 3,000-parameter network)"


def test_seeds_summary_judges_every_last_epoch_of_every_seed(tmp_path: Path) -> None:
    path = write_seeds_file(tmp_path / "seeds_tiny.json", {0: [99.45, 99.41, 99.50], 1: [99.50, 99.39, 99.60]})
    summary = summarize_seeds(path)
    assert summary.seed_mins == {0: 99.41, 1: 99.39}
    assert summary.worst == 99.39 and summary.passing == 1 and not summary.holds
    table = seeds_table([summary])
    assert "| tiny | 4,000 | 15 | 1 of 2 | 99.39 | does not hold | 99.41, 99.39 | cpu (1 threads) |" in table
    path = write_seeds_file(tmp_path / "seeds_tiny.json", {0: [99.40, 99.41, 99.50]})
    assert summarize_seeds(path).holds and not summarize_seeds(path).claimed
    assert summarize_seeds(path).verdict == "not claimed yet: 9 of the 10 seeds not run"
    ten = write_seeds_file(tmp_path / "seeds_ten.json", {seed: [99.45, 99.41, 99.50] for seed in range(10)})
    assert summarize_seeds(ten).claimed and summarize_seeds(ten).verdict == "holds on 10 seeds"
    data = json.loads(path.read_text())
    data["runs"][0]["speed"] = {"amp": True, "compile": False, "eval_batch_size": None}
    path.write_text(json.dumps(data))
    assert summarize_seeds(path).model == "tiny (amp)"
    write_seeds_file(tmp_path / "seeds_none.json", {})
    with pytest.raises(ValueError, match="no runs yet"):
        summarize_seeds(tmp_path / "seeds_none.json")


def test_seed_runs_table_has_a_row_per_seed_with_its_verdict_and_time(tmp_path: Path) -> None:
    lasts = {1: [99.5, 99.39, 99.6], 0: [99.45, 99.41, 99.5]}
    seeds = read_seeds(write_seeds_file(tmp_path / "seeds_tiny.json", lasts))
    assert [run.seed for run in seeds.runs] == [0, 1] and seeds.label == "tiny"
    rows = seed_runs_table([seeds]).splitlines()
    assert rows[2] == "| tiny | 4,000 | 0 | 99.45, 99.41, 99.50 | yes | 99.50 | 60 | cpu (1 threads) |"
    assert rows[3] == "| tiny | 4,000 | 1 | 99.50, 99.39, 99.60 | NO | 99.60 | 60 | cpu (1 threads) |"


def test_trials_table_and_steady_epoch_time(tmp_path: Path) -> None:
    trial = {"name": "t1", "class": "LadderNet", "spec": {"block1": [8]}, "recipe_changes": {"batch_size": 32},
             "seed": 0, "params": 1_234, "test_acc": [99.0, 99.41, 99.42, 99.43], "train_acc": [98.0, 99.25]}
    (tmp_path / "trials.jsonl").write_text(json.dumps(trial) + "\n")
    trials = read_trials(tmp_path / "trials.jsonl")
    assert find_trial(trials, "t1", 0).last_accs == (99.41, 99.42, 99.43)
    with pytest.raises(KeyError, match="no trial 't1' with seed 1"):
        find_trial(trials, "t1", 1)
    table = trials_table(trials)
    assert "| t1 | 1,234 | LadderNet(block1=[8]) | batch_size=32 | 0 | 99.41, 99.42, 99.43 | 99.25 |" in table
    assert steady_seconds([30.0, 10.0, 12.0, 11.0]) == 11.0  # the first epoch (compiling) is left out
    assert steady_seconds([5.0]) == 5.0


@pytest.mark.parametrize("name", sorted(LADDER))
def test_every_ladder_rung_was_verified_on_at_least_five_seeds(name: str) -> None:
    """Each rung's committed seeds file (seeds 0-4 at least; the claim's 0-9, and 10-19, the seeds unseen when the
    recipes were fixed) matches the registered model and recipe (at most 15 epochs)."""
    seeds = read_seeds(seeds_path(name))
    assert seeds.params == count_parameters(get_model(name)) < LADDER[name]
    assert get_recipe(name).matches(seeds.recipe) and get_recipe(name).epochs <= MAX_EPOCHS
    assert set(range(5)) <= {run.seed for run in seeds.runs} <= set(CLAIM_SEEDS) | set(range(10, 20))
    assert all(len(run.test_acc) == get_recipe(name).epochs for run in seeds.runs)


@pytest.mark.parametrize("name", sorted(SMALLER_SIZES))
def test_every_smaller_size_ran_on_test_seeds_from_zero(name: str) -> None:
    """Each size below the stretch rung (issue 26) has a committed seeds file of its registered network and recipe,
    on at least 3 test seeds counted up from 0 (none skipped, so no seed was left out for its figure)."""
    seeds = read_seeds(seeds_path(name))
    assert seeds.params == count_parameters(get_model(name)) < SMALLER_SIZES[name]
    assert get_recipe(name).matches(seeds.recipe) and get_recipe(name).epochs <= MAX_EPOCHS
    ran = sorted(run.seed for run in seeds.runs)
    assert len(ran) >= 3 and ran == list(range(len(ran))), ran
    assert all(len(run.test_acc) == get_recipe(name).epochs for run in seeds.runs)


# A rung that falls short stays visible here as a strict xfail naming the failure (strict: the day its recorded
# seeds all hold, this test says so) until a new recipe or rung replaces it.
@pytest.mark.parametrize("name", [
    pytest.param("under8k", marks=pytest.mark.xfail(
        strict=True, reason="seed 19, unseen when its recipe was fixed, ends 99.42, 99.39, 99.41 (issue 24)")),
    pytest.param("under5k", marks=pytest.mark.xfail(
        strict=True, reason="seed 10, unseen when its recipe was fixed, ends 99.40, 99.31, 99.34 (issue 24)")),
    pytest.param("under3762", marks=pytest.mark.xfail(
        strict=True, reason="seeds 13 and 14, unseen like all its seeds, end 99.39, 99.39, 99.41 and 99.42, 99.38, "
        "99.39 (issue 26)"))])
def test_ladder_rungs_hold_the_claim_on_every_seed(name: str) -> None:
    summary = summarize_seeds(seeds_path(name))
    assert summary.claimed, "\n".join([summary.verdict, *summary.lines()])


def test_ladder_plot_draws_every_rung_and_anchor(tmp_path: Path) -> None:
    from mnist_lesson.plots import plot_ladder

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


def test_grading_table_gives_per_submission_times_speed_up_and_points(tmp_path: Path) -> None:
    path = tmp_path / "grading_times.json"
    assert "Not measured yet" in grading_table(read_grading_times(path))
    runs = [{"jobs": jobs, "submissions": 4, "wall_s": wall, "s_per_submission": wall / 4, "graded": 4, "failed": 0,
             "mean_points": {"correct": 29.0, "partly": 28.0, "raises": 29.0, "invalid": 0.0}, "max_points": 29}
            for jobs, wall in ((1, 60.0), (2, 40.0))]
    record_grading_times("cpu (test)", runs, path)
    assert read_grading_times(path) == {"cpu (test)": runs}
    table = grading_table(read_grading_times(path))
    before = "| cpu (test) | none (before isolation existed) |"
    assert f"{before} 1 | 4 | 1.0 | 15.00 | 1.00x | 29.0, 28.0, 29.0, 0.0 of 29 |" in table
    assert "| cpu (test) | none (before isolation existed) | 2 | 4 | 0.7 | 10.00 | 1.50x |" in table
    assert "2 kernel(s) at once grade a class of 300 in about 50 minutes on cpu (test)" in table
    # Side by side with isolation: the closing sentence speaks for the grader's default, the isolated kernels.
    isolated = [{**run, "isolation": mode, "wall_s": run["wall_s"] * factor,
                 "s_per_submission": run["wall_s"] * factor / 4}
                for mode, factor in (("none", 1.0), ("namespaces", 1.2)) for run in runs]
    record_grading_times("cpu (test)", isolated, path)
    table = grading_table(read_grading_times(path))
    assert "| cpu (test) | namespaces | 2 | 4 | 0.8 | 12.00 | 1.25x |" in table
    assert "2 kernel(s) at once each in its own namespaces grade a class of 300 in about 60 minutes" in table


def test_seed_groups_table_splits_the_claim_by_seeds(tmp_path: Path) -> None:
    lasts = {0: [99.45, 99.41, 99.50], 1: [99.50, 99.46, 99.60], 5: [99.38, 99.44, 99.47]}
    summary = summarize_seeds(write_seeds_file(tmp_path / "seeds_tiny.json", lasts))
    table = seed_groups_table([summary], {"seeds 0-4": range(5), "seeds 5-9": range(5, 10), "seeds 10-": [10]})
    assert "| model | seeds 0-4 | seeds 5-9 | seeds 10- |" in table
    assert "| tiny | 2 of 2 hold, worst 99.41 | 0 of 1 hold, worst 99.38 | not run yet |" in table


def test_notebook_times_are_recorded_per_device_and_tabled_in_minutes(tmp_path: Path) -> None:
    path = tmp_path / "notebook_times.json"
    assert read_notebook_times(path) == {}
    assert "Not measured yet" in notebook_times_table(read_notebook_times(path))
    record_notebook_time("cpu (test)", "00_a.ipynb", 90.04, path)
    record_notebook_time("cpu (test)", "01_b.ipynb", 30.0, path)
    record_notebook_time("cuda (test)", "00_a.ipynb", 6.0, path)
    times = read_notebook_times(path)
    assert times == {"cpu (test)": {"00_a.ipynb": 90.0, "01_b.ipynb": 30.0}, "cuda (test)": {"00_a.ipynb": 6.0}}
    rows = notebook_times_table(times).splitlines()
    assert rows[0] == "| notebook | minutes on cpu (test) | minutes on cuda (test) |"
    assert rows[2:] == ["| 00_a.ipynb | 1.5 | 0.1 |", "| 01_b.ipynb | 0.5 | not measured |",
                        "| all notebooks | 2.0 | 0.1 |"]


def test_a_speed_file_is_summarized_against_its_baseline(tmp_path: Path) -> None:
    data = {"device": "cpu (test)", "model": "final", "mode": "levers", "epochs": 2, "baseline": "slow",
            "runs": {"slow": [{"wall": 30.0, "epochs": [20.0, 10.0], "test_acc": 98.0}] * 2,
                     "fast": [{"wall": 12.0, "epochs": [9.0, 4.0], "test_acc": 98.5},
                              {"wall": 14.0, "epochs": [9.0, 6.0], "test_acc": 98.25}]}}
    (tmp_path / "speed_levers_cpu.json").write_text(json.dumps(data))
    summary = read_speed(tmp_path / "speed_levers_cpu.json")
    fast = summary.rows[1]
    assert (fast.config, fast.runs, fast.wall, fast.epoch, fast.vs_baseline) == ("fast", 2, 13.0, 5.0, 0.5)
    table = speed_table([summary]).splitlines()
    assert table[-1] == "| cpu (test) | final | fast | 2 | 2 | 13.0 | 5.00 | 0.50x | 98.50, 98.25 |"
    assert "Not measured yet" in speed_table([])


def test_no_module_but_records_parses_the_evidence() -> None:
    """Every recorded format is read in one place: a module of the package or a benchmark that deals with the
    evidence reads and writes it through mnist_lesson.records, never with json itself."""
    repo = Path(__file__).resolve().parents[1]
    for path in [*(repo / "mnist_lesson").rglob("*.py"), *(repo / "benchmarks").glob("*.py")]:
        source = path.read_text()
        if path.name != "records.py" and ("evidence" in source or "mnist_lesson.records" in source):
            assert not re.search(r"json\.(loads?|dumps?)\(", source), f"{path.name}: use mnist_lesson.records"


def _design_run(design: Design, seed: int, val: float, **recorded: Any) -> dict[str, Any]:
    """A design run as benchmarks/design.py records it (fields in `recorded` replace the design's own)."""
    epochs = [{"epoch": i + 1, "val_acc": val, "test_acc": val - 0.1} for i in range(LAST_EPOCHS)]
    return {"key": design.key, "seed": seed, "threads": STANDARD_THREADS, "recipe": design.recipe.to_dict(),
            "params": count_parameters(design.build()), "epochs": epochs, **recorded}


def test_a_study_whose_recorded_recipe_no_longer_matches_says_which_design_and_what_differs() -> None:
    """Changing a design's recipe (or model) must never silently drop it from its study: the summary names it."""
    skeleton, transitions = get_design("steps", "skeleton"), get_design("steps", "transitions")
    runs = [_design_run(skeleton, seed, 99.0 + seed / 10) for seed in range(3)]
    summaries = summarize_study("steps", runs)  # designs without any runs are simply not run yet
    assert [(s.key, s.figures) for s in summaries] == [("skeleton", {0: 99.0, 1: 99.1, 2: 99.2})]
    old = transitions.recipe.with_overrides(lr=0.05, augment=Augment(shift=0.1)).to_dict()
    stale = runs + [_design_run(transitions, seed, 99.0, recipe=old) for seed in range(3)]
    assert stale_designs("steps", stale) == [
        "study 'steps', design 'transitions': 3 recorded run(s), none with its current recipe and model "
        "(recipe lr=0.05, augment.shift=0.1 recorded, lr=0.01, augment.shift=0 now); rerun "
        "`python benchmarks/design.py steps --only transitions`"]
    with pytest.raises(StaleStudyError, match="design 'transitions'.*lr=0.05"):
        summarize_study("steps", stale)
    resized = runs + [_design_run(transitions, 0, 99.0, params=1_234)]
    with pytest.raises(StaleStudyError, match=r"design 'transitions'.*\(1,234 parameters recorded, [\d,]+ now\)"):
        summarize_study("steps", resized)
    # One run that still matches keeps the design in its study; the other runs simply do not count.
    assert [s.key for s in summarize_study("steps", stale + [_design_run(transitions, 0, 99.3)])] == [
        "skeleton", "transitions"]


def test_the_committed_design_runs_have_no_stale_design() -> None:
    assert all(stale_designs(study) == [] for study in STUDIES)


def test_the_gpu_reports_read_as_recorded() -> None:
    """Every gpu_check report kept as evidence reads; the timed `train final` run has its epochs and accuracies."""
    from mnist_lesson.records import gpu_check_paths, read_gpu_check

    checks = [read_gpu_check(path) for path in gpu_check_paths()]
    assert checks and all(check.device.startswith("cuda") and check.code and check.torch for check in checks)
    trains = [step for check in checks for step in check.steps if step.name == "train-final" and step.state == "ok"]
    assert trains and all(len(step.epoch_s) == len(step.test_acc) == 15 and step.run_s > 0 for step in trains)
    notebooks = [run for check in checks for step in check.steps for run in step.notebooks]
    assert {run["notebook"][:2] for run in notebooks} >= {"02", "08"}


def test_a_smoke_gpu_report_is_refused(tmp_path: Path) -> None:
    from mnist_lesson.records import read_gpu_check

    path = tmp_path / "gpu_check_x.json"
    path.write_text('{"smoke": true, "steps": []}')
    with pytest.raises(ValueError, match="smoke"):
        read_gpu_check(path)


def test_the_recorded_step_has_no_more_operations_than_before_for_any_recipe() -> None:
    """dispatch_counts.json covers every registered recipe, and the step now dispatches fewer operations than it
    did on either device (benchmarks/dispatch_count.py)."""
    from mnist_lesson.recipes import RECIPES
    from mnist_lesson.records import read_dispatch_counts

    counts = read_dispatch_counts()
    assert set(counts.counts) == set(RECIPES) and counts.ways == ("before (CPU)", "before (GPU)", "now")
    for name, row in counts.counts.items():
        assert row["now"] < row["before (GPU)"] <= row["before (CPU)"], name


def test_the_cpu_levers_read_as_recorded() -> None:
    """cpu_levers.json: the baseline (one thread, the package's default) first, every configuration timed alike."""
    from mnist_lesson.records import read_cpu_levers
    from mnist_lesson.tables import cpu_levers_table

    levers = read_cpu_levers()
    names = list(levers.seconds)
    assert names[0] == "1 thread" and len(names) >= 4
    assert len({len(seconds) for seconds in levers.seconds.values()}) == 1  # alternating: the same runs each
    assert "1.00x" in cpu_levers_table(levers).splitlines()[2] and levers.device.startswith("cpu (")


def test_the_unseen_seeds_verdict_counts_only_the_seeds_that_ran() -> None:
    from mnist_lesson.records import SeedsSummary
    from mnist_lesson.tables import unseen_seeds_verdict

    s = SeedsSummary("under5k", 4832, 15, {0: (99.5, 99.5, 99.5), 10: (99.40, 99.31, 99.34), 11: (99.42, 99.43, 99.44)},
                     "cpu")
    text = unseen_seeds_verdict([s], range(10, 20))
    assert "1 of the 2 that ran hold" in text and "10: 99.31, 11: 99.42" in text and "8 of the 10 have not run" in text
    none = SeedsSummary("under8k", 6920, 15, {0: (99.5, 99.5, 99.5)}, "cpu")
    assert "`under8k` has not run any of them yet." in unseen_seeds_verdict([none], range(10, 20))


def test_the_smaller_sizes_verdict_names_every_size_and_the_smallest_that_holds() -> None:
    from mnist_lesson.records import SeedsSummary
    from mnist_lesson.studies import DesignSummary
    from mnist_lesson.tables import smaller_sizes_verdict

    stretch = DesignSummary("early", "early", 3656, {0: 99.45, 1: 99.48, 2: 99.48}, {0: 99.4, 1: 99.4, 2: 99.4})
    close = DesignSummary("s-2884", "s", 2884, {0: 99.44, 1: 99.46, 2: 99.41}, {0: 99.4, 1: 99.4, 2: 99.4})
    far = DesignSummary("s-2068", "s", 2068, {0: 99.20, 1: 99.25, 2: 99.30}, {0: 99.4, 1: 99.4, 2: 99.4})
    stretch_seeds = SeedsSummary("under3762", 3656, 15, {0: (99.40,) * 3, 13: (99.39, 99.39, 99.41)}, "cpu")
    held = SeedsSummary("under3000", 2884, 15, {seed: (99.45, 99.41, 99.5) for seed in range(10)}, "cpu")
    short = SeedsSummary("under2100", 2068, 15, {0: (99.35, 99.4, 99.4), 1: (99.5,) * 3, 2: (99.41,) * 3}, "cpu")
    text = smaller_sizes_verdict(stretch, [close, far], stretch_seeds, [held, short])
    assert "(no measurable difference)" in text.splitlines()[2] and "larger than the seed-to-seed noise" in text
    assert "seeds 0-9: 10 of 10 hold, the mean of each seed's lowest last epoch 99.41" in text
    assert "seeds 0-2: 2 of 3 hold, the mean of each seed's lowest last epoch 99.42; it falls short on seed 0 (99.35)" \
        in text
    # The stretch rung beside each size on that size's seeds only: it ran seeds 0 and 13, so 1 of 1 on seeds 0-2.
    assert "The stretch rung on the same seeds: 1 of 1 hold, the mean of each seed's lowest last epoch 99.40." in text
    assert text.endswith("is `under3000`, 2,884 parameters, on 10 seeds.")
    few = SeedsSummary("under3000", 2884, 15, {0: (99.45,) * 3, 1: (99.5,) * 3, 2: (99.42,) * 3}, "cpu")
    assert "so it is not claimed" in smaller_sizes_verdict(stretch, [close], stretch_seeds, [few])
    none = smaller_sizes_verdict(stretch, [far], stretch_seeds, [short])
    assert "finds no model below the stretch rung (3,656 parameters)" in none and "seed 13 (99.39)" in none
    with pytest.raises(ValueError, match="run every size both ways"):
        smaller_sizes_verdict(stretch, [close, far], stretch_seeds, [held])
    with pytest.raises(ValueError, match="in the same order"):
        smaller_sizes_verdict(stretch, [far, close], stretch_seeds, [held, short])
    # The table starts from the stretch rung's chosen design even though that design names a base of its own study.
    from dataclasses import replace

    from mnist_lesson.tables import smaller_sizes_table
    rows = smaller_sizes_table(replace(stretch, base="rung-recipe"), [close, far]).splitlines()
    assert [row.split(" | ")[5] for row in rows[2:]] == ["", "-0.03", "-0.19"]


def test_the_ladder_table_states_each_verdict_and_recipe_in_words() -> None:
    from mnist_lesson.recipes import FINAL_RECIPE, RECIPES
    from mnist_lesson.records import SeedsSummary
    from mnist_lesson.tables import recipe_in_words, rungs_table, seeds_verdict

    held = SeedsSummary("final", 18152, 15, {0: (99.5, 99.5, 99.5), 1: (99.4, 99.45, 99.5)}, "cpu")
    one_short = SeedsSummary("under5k", 4832, 15, {0: (99.5,) * 3, 1: (99.5,) * 3, 3: (99.40, 99.31, 99.34)}, "cpu")
    all_short = SeedsSummary("under3762", 3736, 15, {0: (99.35,) * 3, 1: (99.5, 99.2, 99.5)}, "cpu")
    assert seeds_verdict(held) == "holds on every one of seeds 0-1"
    assert seeds_verdict(one_short) == "falls short on seed 3 (99.31) of seeds 0, 1, 3"
    assert seeds_verdict(all_short) == "falls short on every one of seeds 0-1 (99.35, 99.20)"
    assert recipe_in_words(RECIPES["final"], FINAL_RECIPE, "final recipe") == "the final recipe"
    assert recipe_in_words(RECIPES["under5k"], FINAL_RECIPE, "final recipe") == (
        "the final recipe with batches of 32, a moving average of the weights evaluated (decay 0.999), shifts of up "
        "to 5%")
    assert recipe_in_words(FINAL_RECIPE.with_overrides(lr=0.05), FINAL_RECIPE, "final recipe") == \
        "the final recipe with `lr=0.05`"
    rows = rungs_table([held, one_short], {"final": 20_000, "under5k": 5_000}, RECIPES, FINAL_RECIPE,
                       "final recipe").splitlines()
    assert rows[2] == "| `final` | 18,152 (20,000) | the final recipe | 2 of 2 | holds on every one of seeds 0-1 |"
    assert rows[3].endswith("| 2 of 3 | falls short on seed 3 (99.31) of seeds 0, 1, 3 |")


def test_runs_label_names_each_group_of_seeds_with_its_own_device() -> None:
    runs = [{"seed": 0, "device": "cpu (1 threads)"}, {"seed": 1, "device": "cpu (1 threads)"},
            {"seed": 2, "device": "cpu (EPYC)", "code": "git a"}, {"seed": 3, "device": "cpu (EPYC)", "code": "git b"},
            {"seed": 5, "device": "cpu (Xeon)", "code": "git c"}]
    assert records.runs_label(runs) == ("seeds 0-1 on cpu (1 threads) (no code version recorded); seeds 2-3 on "
                                        "cpu (EPYC); seed 5 on cpu (Xeon)")
    assert records.runs_label([runs[0], {**runs[1], "seed": 3}]) == \
        "seeds 0, 3 on cpu (1 threads) (no code version recorded)"


def test_the_noise_leaves_out_studies_still_being_recorded() -> None:
    """The pooled noise that notebook 02 renders stays put while an unfinished study appends runs."""
    from mnist_lesson.records import measure_noise, read_design_runs, unfinished_keys
    from mnist_lesson.studies import UNFINISHED_STUDIES

    pending = unfinished_keys()
    assert pending == {d.key for name in UNFINISHED_STUDIES for d in STUDIES[name]} - {
        d.key for name, designs in STUDIES.items() if name not in UNFINISHED_STUDIES for d in designs}
    kept = [run for run in read_design_runs() if run["key"] not in pending]
    assert measure_noise() == measure_noise(kept)
    if pending:
        extra = [{**kept[0], "key": sorted(pending)[0], "seed": seed} for seed in (0, 1)]
        assert measure_noise(kept + extra).designs == measure_noise(kept).designs + 1  # counted only when asked
