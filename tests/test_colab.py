"""The Colab student: a notebook opened alone, with nothing but the package built from the repository.

conftest.py builds a wheel from the checkout, installs it (not editable) into a temporary folder and defines
a kernel that sees that folder and the third-party packages, but not the checkout (`python -S`: the editable
install's hook is not loaded). nbval runs every notebook of the course in that kernel, once, so each one is
checked as Colab would run it. These tests check the wheel itself and the setup cell as Colab would run it,
with a stand-in `google.colab` and an unreachable address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import mnist_lesson
from conftest import SITE_PACKAGES, StudentInstall
from mnist_lesson.colab import (
    COLAB_METADATA,
    RELEASE,
    install_address,
    reported_version,
    runtime_note,
    setup_source,
)
from mnist_lesson.course import LESSONS, notebook_paths

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = [path for path in notebook_paths(REPO) if path.is_relative_to(REPO / "notebooks")]


def isolated_python(installed: StudentInstall, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": installed.python_path}
    done = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=installed.target.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow  # builds the wheel or starts a kernel
def test_the_wheel_carries_the_package_and_its_evidence(installed: StudentInstall) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    evidence = sorted(n for n in names if n.startswith("mnist_lesson/evidence/") and not n.endswith(".py"))
    shipped = sorted(str(p.relative_to(REPO)) for p in (REPO / "mnist_lesson" / "evidence").rglob("*.json*"))
    assert evidence == shipped and evidence
    location = isolated_python(installed, "import mnist_lesson; print(mnist_lesson.__file__)")
    assert Path(location).is_relative_to(installed.target), location
    found = isolated_python(installed, "from mnist_lesson.records import evidence, in_checkout; "
                                       "print(evidence('seeds_final.json').is_file(), in_checkout())")
    assert found == "True False"


@pytest.mark.slow  # builds the wheel or starts a kernel
def test_the_evidence_each_notebook_shows_ships_with_the_wheel(installed: StudentInstall) -> None:
    wanted = sorted({name for lesson in LESSONS for name in lesson.evidence})
    found = isolated_python(installed, "import json; from mnist_lesson.records import evidence; "
                                       f"print(json.dumps([evidence(n).is_file() for n in {wanted!r}]))")
    missing = [name for name, ok in zip(wanted, json.loads(found), strict=True) if not ok]
    assert not missing, f"mnist_lesson/course.py lists evidence the installed package lacks: {missing}"


def test_every_notebook_asks_colab_for_a_gpu() -> None:
    for path in NOTEBOOKS:
        metadata = nbformat.read(path, as_version=4).metadata
        assert {key: metadata.get(key) for key in COLAB_METADATA} == COLAB_METADATA, path.name


@pytest.mark.slow  # builds the wheel or starts a kernel
def test_a_failed_install_stops_run_all_with_one_clear_error(tmp_path: Path,
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


def test_every_notebook_installs_and_opens_the_pinned_release_not_a_branch() -> None:
    """The checks a student runs are the checks graded: each setup cell installs the tag of this version."""
    release = f"v{mnist_lesson.__version__}"
    assert RELEASE == release and install_address().endswith(f"@{release}")
    for path in NOTEBOOKS + [REPO / "instructor" / "exercises.ipynb"]:
        nb = nbformat.read(path, as_version=4)
        setup = next(cell.source for cell in nb.cells if cell.cell_type == "code")
        if path.is_relative_to(REPO / "instructor"):  # the solutions' source has no Colab cells: run locally
            assert "%pip install" not in setup
            continue
        assert f'%pip install -q "{install_address()}"' in setup, path.name
        assert f"/blob/{release}/" in "".join(cell.source for cell in nb.cells[:2]), path.name
    # pyproject.toml reads the version from the package, so the wheel, the tag and the notebooks name one version.
    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_the_device_cell_reports_the_version_the_grader_reads() -> None:
    import torch

    note = runtime_note("01_first_network.ipynb", torch.device("cpu"))
    assert note.startswith(f"mnist_lesson {mnist_lesson.__version__}, torch ")
    assert reported_version(note) == mnist_lesson.__version__
    assert reported_version("torch 2.2, running on cpu") is None and reported_version("mnist_lesson , torch") is None
