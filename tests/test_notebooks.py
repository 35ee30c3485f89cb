"""The teaching notebooks in ``notebooks/`` run from top to bottom in a fresh kernel, and are stored clean.

Each notebook is executed with nbclient in a new ``python3`` kernel started with this interpreter
(``sys.executable``, through a kernelspec written to a temporary ``JUPYTER_PATH``, which Jupyter searches
first), with the repository root on ``PYTHONPATH`` so the kernel imports this checkout's ``tfcam``. A cell that
raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = [
    "01_quickstart.ipynb",
    "02_methods_gallery.ipynb",
    "03_training_callback.ipynb",
    "04_which_method_to_trust.ipynb",
    "05_beyond_classification.ipynb",
    "06_write_your_own_method.ipynb",
]
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def test_every_notebook_is_present():
    assert NOTEBOOKS == EXPECTED


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cell"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"{name}: code cell {i} has stored outputs"
        assert cell.get("execution_count") is None, f"{name}: code cell {i} has an execution count"
    for cell in nb.cells:
        assert "attachments" not in cell, f"{name}: a cell has attachments"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A ``python3`` kernelspec running this interpreter, found first through ``JUPYTER_PATH``."""
    base = tmp_path_factory.mktemp("jupyter")
    spec_dir = base / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tfcam tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {
        "JUPYTER_PATH": os.pathsep.join([str(base), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_env, tmp_path, monkeypatch):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the traceback when a cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


def test_readme_notebook_figures_come_from_marked_cells():
    """Every notebook picture the README shows is marked in a notebook and committed, small."""
    import re

    marked = set()
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                marked.update(re.findall(r"^#\s*README figure:\s*(\S+\.png)\s*$", cell.source, re.MULTILINE))
    shown = set(re.findall(r"docs/images/(notebook_\w+\.png)", (ROOT / "README.md").read_text()))
    assert shown, "the README shows no notebook figure"
    assert shown <= marked, f"README figures no notebook cell marks: {sorted(shown - marked)}"
    for png in shown:
        path = ROOT / "docs" / "images" / png
        assert path.is_file(), f"{path} is missing: run scripts/readme_notebook_figures.py"
        assert path.stat().st_size < 300_000, f"{path} is larger than 300 kB"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
