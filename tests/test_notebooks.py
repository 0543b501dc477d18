"""The notebooks: Jupytext percent-format ``.py`` sources paired with ``.ipynb`` files that are committed
without outputs, and every notebook executed (nbclient, the ``python3`` kernel of this interpreter) with
its small settings (``RELMON_NB_SMALL=1``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_paper", "02_quality_vs_accuracy", "03_operations"]


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_paired_and_stripped(name):
    import jupytext
    import nbformat

    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for i, cell in enumerate(ipynb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name}.ipynb cell {i} holds outputs; fix: jupytext --sync notebooks/{name}.py "
                f"or jupyter nbconvert --clear-output --inplace notebooks/{name}.ipynb")
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert _cells(ipynb) == _cells(source), (
        f"notebooks/{name}.ipynb and .py differ; fix: jupytext --sync notebooks/{name}.py")


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RELMON_NB_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    marker = None
    if name == "03_operations":
        # Prometheus is found on PATH, wherever it is installed: a wrapper first on PATH notes its use
        import shutil
        import tempfile

        real = shutil.which("prometheus")
        assert real, "no prometheus on PATH (scripts/setup.sh installs Debian's)"
        bindir = Path(tempfile.mkdtemp(prefix="relmon-path-"))
        marker = bindir / "used"
        (bindir / "prometheus").write_text(f'#!/bin/sh\ntouch "{marker}"\nexec "{real}" "$@"\n')
        (bindir / "prometheus").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
    if marker is not None:
        assert marker.exists(), "03_operations did not start the prometheus found on PATH"
        shutil.rmtree(marker.parent, ignore_errors=True)


def test_operations_notebook_calibrates_through_the_public_api():
    source = (NOTEBOOKS / "03_operations.py").read_text()
    assert "relmon.calibrate(" in source
    for internal in ("relmon.jobs.common", "score_stream", "make_estimator", "Calibration("):
        assert internal not in source, f"03_operations uses the internal {internal}"
