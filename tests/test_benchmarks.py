"""Benchmark scripts: they refuse smoke mode (whose timings mean nothing) and measure what they say they do."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mnist_lesson.config import Speed

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.name for path in (REPO / "benchmarks").glob("*.py") if path.name != "common.py")


def load_script(name: str) -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their shared module, as when run directly
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


ARGUMENTS = {"design.py": ["steps"], "gpu_notebooks.py": ["02", "--out", "notebooks.json"], "gpu_collect.py": ["."]}


# readme_tables.py trains nothing; the grader always runs notebooks in smoke mode, so grading.py does not care.
@pytest.mark.parametrize("script", [name for name in SCRIPTS if name not in {"readme_tables.py", "grading.py"}])
def test_benchmarks_refuse_smoke_mode(script: str, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script(script.removesuffix(".py"))
    monkeypatch.setenv("MNIST_LESSON_SMOKE", "1")
    monkeypatch.setattr(sys, "argv", [script, *ARGUMENTS.get(script, [])])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 2 and "MNIST_LESSON_SMOKE is set" in capsys.readouterr().err


@pytest.mark.slow  # a fresh Python importing torch
def test_a_benchmark_run_as_a_script_refuses_smoke_mode_too() -> None:
    env = {**os.environ, "MNIST_LESSON_SMOKE": "1"}
    done = subprocess.run([sys.executable, "benchmarks/seeds.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "MNIST_LESSON_SMOKE is set" in done.stderr, done.stderr


@pytest.mark.slow
def test_speed_modes_time_the_assignments_way_against_the_package_default(mnist_root: Path) -> None:
    """Each mode's baseline is the assignment's DataLoader way; a timed run (smoke-sized here) reports its wall
    time, epoch times and accuracy. The data-path mode is the same loop with the assignment's model."""
    speed = load_script("speed")
    for mode, (_, _, configs) in speed.MODES.items():
        assert list(configs)[0] == speed.BASELINE and configs[speed.BASELINE] == speed.ASSIGNMENT_WAY, mode
        assert configs["in-memory + channels_last"] == Speed(), mode
    assert speed.ASSIGNMENT_WAY.data == "dataloader" and not speed.ASSIGNMENT_WAY.channels_last
    from mnist_lesson import runs
    from mnist_lesson.config import SMOKE_LIMITS

    original = runs.limits_for
    runs.limits_for = lambda smoke: SMOKE_LIMITS  # a few batches: this checks what is timed, not how fast
    try:
        run = speed.timed_run("assignment", Speed(), 1, torch.device("cpu"), seed=0)
    finally:
        runs.limits_for = original
    assert run["wall"] >= sum(run["epochs"]) > 0
    assert len(run["epochs"]) == 1 and 0 <= run["test_acc"] <= 100


def test_readme_tables_render_each_block_in_every_page_that_holds_it() -> None:
    """Blocks may sit in README.md or any page of docs/; a block that no page holds is named."""
    tables = load_script("readme_tables")
    blocks = {"a": lambda: "A", "b": lambda: "B\nB"}
    readme, page = "x\n<!-- a -->\nold\n<!-- /a -->\n", "<!-- b -->\n<!-- /b -->\n- <!-- a -->\n\n<!-- /a -->\n"
    assert tables.render({"README.md": readme, "docs/x.md": page}, blocks) == {
        "README.md": "x\n<!-- a -->\nA\n<!-- /a -->\n",
        "docs/x.md": "<!-- b -->\nB\nB\n<!-- /b -->\n- <!-- a -->\nA\n<!-- /a -->\n"}
    with pytest.raises(ValueError, match=r"has a block for \['b'\]"):
        tables.render({"README.md": readme}, blocks)
    assert tables.pages()[0] == REPO / "README.md"


def test_the_ladder_findings_quote_the_recorded_trials() -> None:
    """Every figure of the findings comes from the trials file: change a trial's parameters and the text follows."""
    from dataclasses import replace

    from mnist_lesson.records import read_trials

    tables = load_script("readme_tables")
    trials = read_trials()
    text = tables.ladder_findings(trials)
    for name in ("u8k-b64", "b32", "sepB-b32", "p1"):
        assert f"{next(t for t in trials if t.name == name).params:,}" in text, name
    resized = [replace(t, params=1_111) if t.name == "b32" else t for t in trials]
    changed = tables.ladder_findings(resized)
    assert "a 1,111-parameter plain net" in changed and "the plain 1,111 reached" in changed


def test_every_benchmark_script_shares_the_common_boilerplate() -> None:
    for name in SCRIPTS:
        source = (REPO / "benchmarks" / name).read_text()
        assert "from common import" in source, name
        assert "smoke_mode()" not in source, f"{name}: use common.refuse_smoke_mode"
        if name not in {"readme_tables.py", "grading.py"}:
            assert "refuse_smoke_mode(" in source, name


def test_gpu_collect_folds_json_and_logs_into_one_seeds_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds from a gpu_check report and from a seeds file, plus a run rebuilt from its log (said so); a log of an
    unfinished run is left out; the result reads like any seeds file."""
    from mnist_lesson.records import read_seeds, summarize_seeds

    monkeypatch.delenv("MNIST_LESSON_SMOKE", raising=False)  # it reads recorded runs, and refuses smoke mode
    collect = load_script("gpu_collect")
    recipe = {"epochs": 2, "batch_size": 64}
    run = {"device": "cuda (X)", "seconds": 9.0, "code": "git abc", "test_acc": [99.45, 99.5], "train_acc": [98, 99],
           "test_loss": [0.03, 0.02]}
    (tmp_path / "final_a.json").write_text(json.dumps({"steps": [{"figures": {
        "model": "final", "runs": [{**run, "seed": 0, "claim_holds": False}]}}]}))
    (tmp_path / "final_s1.json").write_text(json.dumps({"model": "final", "params": 18152, "recipe": recipe,
                                                         "torch": "2.x", "runs": [{**run, "seed": 1}]}))
    lines = ["epoch 1/2:  50%|#  | 1/2 [00:01<00:01]",
             "epoch  1/2: train loss 0.3656 acc 88.71% | test loss 0.0880 acc 97.28% | lr 0.01521 | 15.6 s",
             "epoch  2/2: train loss 0.1483 acc 95.56% | test loss 0.0460 acc 99.46% | lr 4e-07 | 6.3 s"]
    (tmp_path / "final_s2.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "final_s3.log").write_text(lines[1] + "\n")  # stopped after epoch 1 of 2
    out = tmp_path / "seeds_final_cuda.json"
    assert collect.main([str(tmp_path), "--out", str(out)]) == 0
    seeds = read_seeds(out)
    assert [r.seed for r in seeds.runs] == [0, 1, 2] and seeds.recipe == recipe
    rebuilt = seeds.runs[2]
    assert rebuilt.test_acc == (97.28, 99.46) and rebuilt.meta["from"] == "log" and rebuilt.device == "cuda (X)"
    assert rebuilt.seconds == pytest.approx(21.9) and "claim_holds" not in json.loads(out.read_text())["runs"][0]
    assert summarize_seeds(out).last_accs == {0: (99.45, 99.5), 1: (99.45, 99.5), 2: (97.28, 99.46)}
