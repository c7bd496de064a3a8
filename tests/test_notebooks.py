"""Execute every notebook in notebooks/ with nbclient; any cell error fails the test.

The kernel is this interpreter (``sys.executable``, so the venv's python and its geoattn): a kernelspec
written to a temporary Jupyter data directory, found through ``JUPYTER_PATH``. Each notebook runs in a
copy of its cells, so the committed outputs are never rewritten by the tests. Set ``GEOATTN_NB_WRITE=1``
to store the fresh outputs back into the notebooks (how the committed outputs were produced).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "geoattn-test-python"
CELL_TIMEOUT_S = 240  # per cell, generous for a loaded CI machine; each notebook takes well under a minute unloaded


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that launches ``sys.executable`` with offline Hugging Face (matplotlib uses the kernel's
    inline backend, headless)."""
    data_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = data_dir / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "geoattn tests", "language": "python",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data_dir), old]))
    yield KERNEL
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def test_there_are_four_notebooks():
    assert [p.name[:3] for p in PATHS] == ["01_", "02_", "03_", "04_"]


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes_without_error(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "the notebook produced no output"
    if os.environ.get("GEOATTN_NB_WRITE") == "1":
        nbformat.write(nb, path)
