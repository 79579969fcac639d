"""The first notebook a user opens runs, cell by cell, on a tiny fewshot run's outputs."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT, _deep_merge
from tests.pipelines.test_fewshot_e2e import TINY

NOTEBOOK = PROJECT_ROOT / "notebooks" / "explore.ipynb"


def test_notebooks_folder_holds_only_the_explore_notebook() -> None:
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == ["explore.ipynb"]


@pytest.mark.slow
def test_explore_notebook_runs_on_a_tiny_fewshot_run(kedro_project) -> None:
    kedro_project.set_params(_deep_merge(TINY, {"fewshot": {"seeds": [0]}}))
    kedro_project.run("fewshot")
    folder = kedro_project.path / "notebooks"  # where a user opens it: inside the project
    folder.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # frames, split, predicted vs true, MFL attention
    text = "".join(o.get("text", "") for o in outputs)
    assert "1 models: k1_seed0" in text
