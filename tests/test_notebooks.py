"""The study-note notebooks: committed without outputs, as the generator writes them, and they
run from top to bottom on this interpreter's kernel."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "docs" / "notebooks"
KERNEL = "lstmkit-test-python"


def _generator():
    spec = importlib.util.spec_from_file_location("notebook_generator",
                                                  NOTEBOOK_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_the_committed_notebooks_are_what_the_generator_writes():
    expected = GENERATOR.expected()
    assert sorted(expected) == NOTEBOOKS, "run `python docs/notebooks/generate.py` and commit"
    stale = [p.name for p, text in expected.items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"stale notebooks {stale}: run `python docs/notebooks/generate.py`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: cell {cell.id} has outputs; commit it stripped"
            )


def test_japanese_and_english_twins_share_their_structure():
    for ja in NOTEBOOK_DIR.glob("*.ja.ipynb"):
        en = ja.with_name(ja.name.replace(".ja.", ".en."))
        cells_ja = nbformat.read(ja, as_version=4).cells
        cells_en = nbformat.read(en, as_version=4).cells
        assert [c.cell_type for c in cells_ja] == [c.cell_type for c in cells_en], ja.name
        hidden = [c.metadata.get("tags", []) for c in cells_ja]
        assert hidden == [c.metadata.get("tags", []) for c in cells_en], ja.name
        assert any("answer" in tags for tags in hidden), f"{ja.name} has no answer cell"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec that starts this interpreter, so the notebooks run on the code under test."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lstmkit tests", "language": "python",
    }))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, kernel_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "stream" for o in outputs), "the notebook printed nothing"
    assert not list(tmp_path.iterdir()), "the notebook wrote files into its working folder"
