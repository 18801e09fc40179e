"""The notebooks in notebooks/ run top to bottom with small settings, draw figures, and are
committed without outputs.

Each notebook runs in a fresh Jupyter kernel (nbclient) started from this test process, so it
inherits conftest's JAX settings (fewer XLA optimisations, the shared compilation cache) through
the environment, plus PDR_JAX_NOTEBOOK_SMALL=1, which shrinks images, sampler steps and training
inside the notebooks. The kernel has one CPU device, as a notebook user's CPU has, not the 8
devices forced on the suite (train_tiny's run over 8 devices took 9 s more), and XLA's
convolutions, as the suite's 8-device processes have (oneDNN's single-device path has its own
test, tests/test_single_device_path.py). The working directory is notebooks/, as in Jupyter.
"""

import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
# Notebook name -> the figures it draws (each one an image/png output).
NOTEBOOKS = {"quickstart": 2, "convert_edm": 2, "train_tiny": 3}
CELL_TIMEOUT_S = 600  # per cell; the slowest cell takes under a minute on 2 loaded CPU cores


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name):
    nb = _read(name)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}.ipynb cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{name}.ipynb cell {index} has an execution count"
    assert "widgets" not in nb.metadata, f"{name}.ipynb carries widget state"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("PDR_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("XLA_FLAGS", os.environ["PDR_TESTS_XLA_COMPILE_FLAGS"])  # one device
    monkeypatch.setenv("PDR_CPU_CONV", "xla")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the PNGs
    nb = _read(name)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    print(f"{name}.ipynb ran in {time.perf_counter() - start:.1f} s")
    images = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= NOTEBOOKS[name], (
        f"{name}.ipynb drew {len(images)} of {NOTEBOOKS[name]} figures"
    )
