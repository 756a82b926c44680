"""notebooks/quickstart.ipynb runs top to bottom in a real kernel on the smoke preset.

The notebook's workdir starts as a copy of the suite's shared BTSegDiff smoke run (the same preset, trained
through run_train.py), so its training cell resumes a finished run and its evaluation cell does the work.
"""

import pathlib
import shutil

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(trained_run, tmp_path, monkeypatch):
    shared = trained_run("btsegdiff-smoke", "--config=configs/btsegdiff.py:smoke")
    shutil.copytree(shared, tmp_path / "run", ignore=shutil.ignore_patterns("eval", ".lock"))
    monkeypatch.setenv("DIFFSEG_NOTEBOOK_PRESET", "smoke")
    monkeypatch.setenv("DIFFSEG_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()

    outputs = {
        i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
    }
    errors = [o for cell in outputs.values() for o in cell if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for cell in outputs.values() for o in cell)
    assert "trained to step 6" in text and "wt: Dice" in text
    images = [o for cell in outputs.values() for o in cell if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the overlay and the uncertainty map are shown"
    assert list((tmp_path / "run" / "eval" / "predictions").glob("*_uncertainty.nii.gz"))
