"""The Colab student: a notebook opened alone, with nothing but the package built from the repository.

A wheel is built from the checkout and installed (not editable) into a temporary folder; every notebook
is copied alone into an empty folder and run in smoke mode by a kernel that sees that folder and the
third-party packages, but not the checkout (`python -S`: the editable install's hook is not loaded). The
setup cell is also run as Colab would run it, with a stand-in `google.colab` and an unreachable address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from mnist_lesson.colab import COLAB_METADATA, setup_source

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the wheel, install it into a fresh target folder and define a kernel that sees only that copy."""
    base = tmp_path_factory.mktemp("colab")
    wheels, target, source = base / "wheels", base / "site", base / "source"
    # Build from a copy of what the package is made of, so the build leaves nothing in the checkout.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "mnist_lesson", source / "mnist_lesson",
                    ignore=shutil.ignore_patterns("__pycache__", "*.lock"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(source)], check=True, timeout=600)
    (wheel,) = wheels.glob("mnist_lesson-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, timeout=600)
    kernels = base / "jupyter" / "kernels" / "colab-student"
    kernels.mkdir(parents=True)
    python_path = os.pathsep.join([str(target), SITE_PACKAGES])
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "a Colab student", "language": "python", "env": {"PYTHONPATH": python_path}}))
    return {"wheel": wheel, "target": target, "jupyter": base / "jupyter", "python_path": Path(python_path)}


def isolated_python(installed: dict[str, Path], code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(installed["python_path"])}
    done = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=installed["target"].parent)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def run_alone(notebook: nbformat.NotebookNode, folder: Path, installed: dict[str, Path],
              monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Execute `notebook` in `folder` with the student's kernel, in smoke mode, keeping going after errors."""
    monkeypatch.setenv("JUPYTER_PATH", str(installed["jupyter"]))
    client = NotebookClient(notebook, kernel_name="colab-student", timeout=900, allow_errors=True,
                            resources={"metadata": {"path": str(folder)}})
    client.execute(env={**os.environ, "MNIST_LESSON_SMOKE": "1"})
    return notebook


def test_the_wheel_carries_the_package_and_its_evidence(installed: dict[str, Path]) -> None:
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    evidence = sorted(n for n in names if n.startswith("mnist_lesson/evidence/"))
    shipped = sorted(str(p.relative_to(REPO)) for p in (REPO / "mnist_lesson" / "evidence").rglob("*.json*"))
    assert evidence == shipped and evidence
    location = isolated_python(installed, "import mnist_lesson; print(mnist_lesson.__file__)")
    assert Path(location).is_relative_to(installed["target"]), location
    found = isolated_python(installed, "from mnist_lesson.results import evidence, in_checkout; "
                                       "print(evidence('seeds_final.json').is_file(), in_checkout())")
    assert found == "True False"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(REPO / "notebooks")) for p in NOTEBOOKS])
def test_every_notebook_runs_alone_and_shows_its_evidence(path: Path, installed: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    alone = tmp_path / path.name
    shutil.copy(path, alone)
    nb = run_alone(nbformat.read(alone, as_version=4), tmp_path, installed, monkeypatch)
    errors = [(cell.source.splitlines()[0], output.get("ename"), output.get("evalue"))
              for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.output_type == "error" and "raises-exception" not in cell.metadata.get("tags", [])]
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [path.name], \
        "a notebook run outside a checkout must not write files next to itself"
    text = "".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
                   + str(output.get("data", {}).get("text/markdown", ""))  # sentences rendered from results
                   for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    if path.name.startswith(("07_", "08_")):
        assert "recorded on" in text.lower(), "the recorded multi-seed evidence must be shown, labelled as recorded"
    assert "no results file" not in text


def test_every_notebook_asks_colab_for_a_gpu() -> None:
    for path in NOTEBOOKS:
        metadata = nbformat.read(path, as_version=4).metadata
        assert {key: metadata.get(key) for key in COLAB_METADATA} == COLAB_METADATA, path.name


def test_a_failed_install_stops_run_all_with_one_clear_error(installed: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stand-in google.colab and an address nothing answers at, the setup cell raises one error that
    names the address and what to do, and the cells after it never run."""
    standin = tmp_path / "standin"
    (standin / "google" / "colab").mkdir(parents=True)
    (standin / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s own module."""\n')
    address = "git+https://127.0.0.1:9/nobody/nothing.git@main"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(standin)!r})\nimport google.colab"),
        nbformat.v4.new_code_cell(setup_source(f"mnist_lesson @ {address}")),
        nbformat.v4.new_code_cell("print('after the setup cell')"),
    ])
    # This kernel must not find the package anywhere: only the third-party packages are on its path.
    kernels = tmp_path / "jupyter" / "kernels" / "colab-student"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "no package", "language": "python", "env": {"PYTHONPATH": SITE_PACKAGES}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    client = NotebookClient(nb, kernel_name="colab-student", timeout=600, resources={"metadata": {"path": str(work)}})
    with pytest.raises(Exception) as raised:  # nbclient's CellExecutionError: "Run all" stops here
        client.execute()
    assert "RuntimeError" in str(raised.value)
    (error,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert error.ename == "RuntimeError"
    assert address in error.evalue and "mnist_lesson/colab.py" in error.evalue and "upload" in error.evalue
    assert not nb.cells[2].outputs
    assert "torch" not in setup_source(f"mnist_lesson @ {address}").split("%pip install")[1].splitlines()[0]
