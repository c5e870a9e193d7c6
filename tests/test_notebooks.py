"""Every notebook in notebooks/ runs top to bottom (tiny settings), and notebooks are stored without outputs."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"01_ddpm_and_samplers.ipynb", "02_sweep_report.ipynb", "03_video_diagnostics.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path):
    nb = nbformat.read(path, as_version=4)
    # kernel "python3" is ipykernel's built-in spec for this interpreter: no `ipykernel install` needed
    client = NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.time()
    client.execute()  # raises CellExecutionError naming the failing cell
    assert time.time() - start < 150
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_are_stripped(path: Path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{path.name}: clear outputs before committing (jupyter nbconvert --clear-output --inplace {path})")
