"""benchmarks/gpu_check.sh and its helper gpu_report.py: the whole script on the CPU in smoke mode (so that it cannot
rot unseen before a GPU runs it), its refusals, and the benchmarks' one way through smoke mode."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_benchmarks import load_script  # benchmarks/NAME.py loaded as when run directly

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = {"speed": ["train-final-graph", "train-final", "train-final-amp", "train-final-compile",
                   "train-final-amp-compile", "speed-levers"],
         "seeds-final": ["seeds-final"], "seeds-rungs": ["seeds-under8k", "seeds-under5k", "seeds-under3762"]}
# What the device machine lacks (the package's train path and the benchmarks must not need it): a Python started
# by the script fails to import these, as it would there; nor is the package installed there (this checkout's
# editable install is taken away), so it comes from the checkout or not at all.
ABSENT_ON_DEVICE = ("torchinfo", "torchscan", "nbclient", "nbformat", "ipykernel", "ipywidgets", "nbval", "jupyter")
BLOCKER = f'''import sys

ABSENT = {ABSENT_ON_DEVICE!r}


class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the device machine)", name=name)
        return None


sys.meta_path[:] = [Absent()] + [finder for finder in sys.meta_path
                                 if "__editable__" not in (getattr(finder, "__module__", None) or "")]
'''


def run_script(tmp_path: Path, *args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """Run gpu_check.sh as the device tool would: `python3` on the PATH, the blocker on PYTHONPATH, TMPDIR private
    (torch.compile's cache stays where it was, so the compiled steps do not compile from scratch every time)."""
    blocker = tmp_path / "device_like"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    base = {key: value for key, value in os.environ.items() if key not in {"OUT", "MNIST_LESSON_SMOKE"}}
    environ = {**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(blocker), "TMPDIR": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": inductor_cache(), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def inductor_cache() -> str:
    """Return the folder torch.compile caches its work in (torch's default, which follows TMPDIR otherwise)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a private helper: elsewhere in another torch
        return os.path.join(tempfile.gettempdir(), "torchinductor_shared")
    return default_cache_dir()


def evidence_files() -> dict[str, float]:
    folder = REPO / "mnist_lesson" / "evidence"
    return {path.name: path.stat().st_mtime for path in folder.glob("*.json")
            if path.name.startswith(("seeds_", "speed_"))}


@pytest.mark.slow  # every step of every part, each a fresh Python on the CPU: a few minutes on 2 cores
def test_cpu_smoke_runs_every_step_into_one_json(tmp_path: Path, mnist_root: Path) -> None:
    before = evidence_files()
    out = tmp_path / "out"
    start = time.perf_counter()
    done = run_script(tmp_path, "--cpu-smoke", timeout=1200, OUT=str(out), MNIST_LESSON_DATA=str(mnist_root))
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"gpu_check.sh --cpu-smoke: {seconds:.0f} s")
    # What comes back from the device machine: at most 8 plainly named files in $OUT, 16 MiB each.
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert all(path.stat().st_size < 16 * 2**20 for path in out.iterdir())
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["smoke"] is True and report["ok"] is True and report["parts"] == list(STEPS)
    for key in ("device", "torch", "code"):
        assert report[key], key
    assert report["device"].startswith("cpu") and report["machine"]["from_checkout"] is True
    assert all(state == "verified" for state in report["data"]["files"].values())
    assert [(step["part"], step["name"]) for step in report["steps"]] == [
        (part, name) for part, names in STEPS.items() for name in names]
    for step in report["steps"]:
        assert step["status"] == 0 and step["state"] == "ok" and step["seconds"] > 0, step["name"]
        assert all(step[key] for key in ("device", "torch", "code", "command")), step["name"]
        assert step["figures"], (step["name"], step.get("figures_error"))
    steps = {step["name"]: step for step in report["steps"]}
    for name in STEPS["speed"][:5]:
        figures = steps[name]["figures"]
        assert figures["smoke"] is True and len(figures["test_acc"]) == len(figures["epoch_s"]) == 1, name
        assert figures["code"] == report["code"] and figures["device"].startswith("cpu"), name
        assert steps[name]["seconds"] > figures["run_s"] > 0, name  # the whole command includes the run
    assert steps["train-final-amp-compile"]["figures"]["speed"]["compile"] is True
    speed = steps["speed-levers"]["figures"]
    assert speed["results"]["smoke"] is True and speed["rows"][0]["config"] == "assignment's DataLoader"
    assert steps["seeds-final"]["figures"]["seeds_done"] == [0, 1]
    for name in STEPS["seeds-rungs"]:
        figures = steps[name]["figures"]
        assert figures["smoke"] is True and figures["seeds_done"] == [0], name
        assert all(run["code"] == report["code"] for run in figures["runs"]), name
    assert "===== seeds-rungs/seeds-under3762" in (out / "gpu_check.log").read_text()
    assert evidence_files() == before, "a smoke check wrote into mnist_lesson/evidence/"


@pytest.mark.slow  # two fresh Pythons that import torch
def test_a_real_check_without_a_gpu_stops_before_any_run(tmp_path: Path, mnist_root: Path) -> None:
    out = tmp_path / "out"
    done = run_script(tmp_path, "seeds-final", timeout=300, OUT=str(out), MNIST_LESSON_DATA=str(mnist_root),
                      CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "no CUDA GPU visible" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["steps"] == [] and report["ok"] is False and report["machine"]["ok"] is False
    assert report["smoke"] is False and report["torch"] and report["code"]


def test_missing_data_is_one_line_before_any_run_and_no_download(tmp_path: Path) -> None:
    """An empty data root: exit 3 at once (no network wait), one line naming the files, a JSON that says so."""
    out, root = tmp_path / "out", tmp_path / "empty"
    root.mkdir()
    start = time.perf_counter()
    done = run_script(tmp_path, "--cpu-smoke", "--data", str(root), timeout=120, OUT=str(out))
    assert done.returncode == 3, done.stdout + done.stderr
    assert time.perf_counter() - start < 60
    (line,) = done.stderr.strip().splitlines()
    assert "train-images-idx3-ubyte (missing)" in line and "carry" in line and "nothing was run" in line
    assert not (root / "MNIST" / "raw").exists()  # nothing fetched, nothing created
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["steps"] == [] and report["data"]["ok"] is False and report["ok"] is False


def test_the_device_like_python_has_no_installed_package(tmp_path: Path) -> None:
    """What the smoke test proves holds without an install: outside the checkout the package is not found."""
    run_script(tmp_path, "--help", timeout=30)  # writes the blocker
    environ = {**os.environ, "PYTHONPATH": str(tmp_path / "device_like")}
    done = subprocess.run([sys.executable, "-c", "import mnist_lesson"], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "No module named 'mnist_lesson'" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-c", "import torchinfo"], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=60)
    assert "absent on the device machine" in done.stderr, done.stderr


def test_bad_calls_are_refused_before_anything_runs(tmp_path: Path) -> None:
    assert run_script(tmp_path, timeout=30).returncode == 2  # no part named
    assert run_script(tmp_path, "speed", "--bogus", timeout=30).returncode == 2
    no_out = run_script(tmp_path, "speed", timeout=30)
    assert no_out.returncode == 2 and "set OUT" in no_out.stderr
    smoke = run_script(tmp_path, "speed", timeout=30, OUT=str(tmp_path / "out"), MNIST_LESSON_SMOKE="1")
    assert smoke.returncode == 2 and "--cpu-smoke" in smoke.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_header_says_how_to_carry_the_four_files() -> None:
    from mnist_lesson.data import FILES

    header = SCRIPT.read_text().split("\nset -uo pipefail")[0]
    for name in FILES:  # each named with its size
        assert re.search(rf"{name} +\([0-9,]+", header), name
    assert "MNIST/raw/" in header and 'carry ["data"]' in header
    assert "data/" in (REPO / ".gitignore").read_text().split()  # the carried folder never gets committed
    assert not re.search(r"^\s*set -[a-z]*e", SCRIPT.read_text(), re.M), "every step must run even if one fails"
    assert not re.search(r"(^|[\s;(])python ", SCRIPT.read_text()), "python3 only: the device has no `python`"


def test_a_gzipped_file_is_unpacked_and_every_file_verified(tmp_path: Path) -> None:
    report_module = load_script("gpu_report")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as packed:
        packed.write(b"not the original")
    found = report_module.check_data(tmp_path)
    assert found["unpacked"] == ["t10k-labels-idx1-ubyte"] and not found["ok"]
    assert found["files"]["t10k-labels-idx1-ubyte"] == "failed its MD5 check"
    assert found["files"]["train-images-idx3-ubyte"] == "missing"
    assert "t10k-labels-idx1-ubyte (failed its MD5 check)" in report_module.data_problem(found)


def test_the_report_keeps_failed_timed_out_and_skipped_steps(tmp_path: Path) -> None:
    report_module = load_script("gpu_report")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "seeds-final.log").write_text("Traceback ...\nRuntimeError: CUDA error\n")
    (tmp_path / "data.json").write_text(json.dumps({"ok": True}))
    (tmp_path / "probe.json").write_text(json.dumps({"ok": True, "device": "cuda (X)", "torch": "2.x", "code": "c"}))
    rows = [["seeds-final", "seeds-final", "seeds", str(tmp_path / "none.json"), "480", "10.0", "12.5", "1", "a b"],
            ["seeds-rungs", "seeds-under8k", "seeds", str(tmp_path / "none.json"), "150", "20", "170.2", "124", "c"],
            ["seeds-rungs", "seeds-under5k", "seeds", str(tmp_path / "none.json"), "3", "", "", "", "d e"]]
    (tmp_path / "steps.tsv").write_text("".join("\t".join(row) + "\n" for row in rows))
    report = report_module.build(tmp_path, ["seeds-final", "seeds-rungs"], smoke=False)
    assert [step["state"] for step in report["steps"]] == ["failed", "timed out", "skipped: the part's time was spent"]
    assert [step["status"] for step in report["steps"]] == [1, 124, None] and report["ok"] is False
    assert report["steps"][0]["seconds"] == 2.5 and "CUDA error" in report["steps"][0]["log_tail"]
    assert all(step["device"] == "cuda (X)" and step["code"] == "c" for step in report["steps"])


@pytest.mark.parametrize("script, out_flag", [("speed", "--json"), ("seeds", "--out")])
def test_a_smoke_check_passes_only_with_a_results_file_outside_evidence(
        script: str, out_flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmarks still refuse smoke mode; --smoke-check goes through only to a file outside evidence/."""
    from mnist_lesson.records import evidence

    module = load_script(script)
    monkeypatch.setenv("MNIST_LESSON_SMOKE", "1")
    for argv in ([], ["--smoke-check"], ["--smoke-check", out_flag, str(evidence(f"{script}_x.json"))]):
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
        with pytest.raises(SystemExit) as exited:
            module.main()
        assert exited.value.code == 2 and "MNIST_LESSON_SMOKE is set" in capsys.readouterr().err, argv
    common = load_script("common")
    assert common.refuse_smoke_mode("x", check=True, out=Path("/tmp/x.json")) is True
    monkeypatch.delenv("MNIST_LESSON_SMOKE")
    assert common.refuse_smoke_mode("x") is False and common.refuse_smoke_mode("x", check=True) is False


@pytest.mark.slow  # a notebook kernel on the CPU
def test_cpu_smoke_notebooks_part_runs_notebook_02_on_a_copy(tmp_path: Path, mnist_root: Path) -> None:
    """The notebooks part (what the device machine runs with carried nbclient/ipykernel wheels): notebook 02 in
    smoke mode on a copy, its record in the JSON, the executed copy back as a tarball, the checkout untouched."""
    notebook = REPO / "notebooks" / "02_receptive_field.ipynb"
    before = notebook.stat().st_mtime_ns
    out = tmp_path / "out"
    environ = {key: value for key, value in os.environ.items() if key not in {"OUT", "MNIST_LESSON_SMOKE"}}
    environ.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
                   MNIST_LESSON_DATA=str(mnist_root))
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", "notebooks", "--out", str(out)], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.json", "gpu_check.log",
                                                             "notebooks_executed.tar.gz"]
    report = json.loads((out / "gpu_check.json").read_text())
    (step,) = report["steps"]
    assert step["name"] == "notebooks-smoke" and step["state"] == "ok"
    (run,) = step["figures"]["runs"]
    assert run["notebook"] == notebook.name and run["ok"] and run["mode"] == "smoke" and run["error"] is None
    assert any("running on cpu" in line for line in run["printed"])
    assert notebook.stat().st_mtime_ns == before


def test_a_failing_notebook_is_named_with_its_cell_and_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebooks = load_script("gpu_notebooks")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('torch x, running on cpu')"),
                                         nbformat.v4.new_markdown_cell("a lesson"),
                                         nbformat.v4.new_code_cell("import not_a_module_anywhere")])
    path = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, path)
    work = tmp_path / "work"
    work.mkdir()
    record, _ = notebooks.run_one(path, work, smoke=True)
    assert record["ok"] is False and record["cells"] == 2 and record["mode"] == "smoke"
    assert record["error"]["cell"] == 2 and record["error"]["ename"] == "ModuleNotFoundError"
    assert record["printed"] == ["torch x, running on cpu"]
    with pytest.raises(SystemExit, match="names 0 notebooks"):
        notebooks.find_notebook("99")


@pytest.mark.slow  # six smoke runs and a notebook side by side on the CPU
def test_cpu_smoke_of_a_whole_session_brings_back_two_files(tmp_path: Path, mnist_root: Path) -> None:
    """benchmarks/gpu_session.sh, as a lease runs it (here with the speed part's time too short for any step, so it
    is quick): the side-by-side processes, one per seed, each leave a gpu_check.json; $OUT holds two files."""
    import tarfile

    session = REPO / "benchmarks" / "gpu_session.sh"
    out = tmp_path / "out"
    out.mkdir()
    environ = {key: value for key, value in os.environ.items() if key not in {"OUT", "MNIST_LESSON_SMOKE"}}
    environ.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
                   MNIST_LESSON_DATA=str(mnist_root), OUT=str(out))
    # The session reads the data from the repository's data/ (what the device tool carries): point it at the test's.
    done = subprocess.run(["bash", str(session), "--phase", "both", "--cpu-smoke", "--speed-seconds", "20",
                           "--side-seconds", "600",
                           "--data", str(mnist_root)], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["results.tar.gz", "speed.json"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = {Path(name).name for name in tar.getnames()}
        tar.extractall(tmp_path / "results", filter="data")
    expected = {"final_s0.json", "final_s1.json", "under8k_s0.json", "under5k_s0.json", "under3762_s0.json",
                "notebooks.json", "speed.json"}
    assert expected <= names, names
    collect = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_collect.py"), str(tmp_path / "results"),
                              "--out", str(tmp_path / "collected.json")], env={**environ, "MNIST_LESSON_SMOKE": ""},
                             capture_output=True, text=True, timeout=300)
    assert "smoke runs are never recorded" in collect.stderr + collect.stdout  # it reads them, and refuses smoke
    for name in expected - {"speed.json"}:
        report = json.loads((tmp_path / "results" / name).read_text())
        assert report["smoke"] is True and report["ok"] is True, (name, [s["state"] for s in report["steps"]])
    speed = json.loads((out / "speed.json").read_text())
    assert [step["name"] for step in speed["steps"]] == STEPS["speed"]
    assert speed["steps"][0]["state"].startswith("skipped")  # 20 s: the first step leaves room for the others
