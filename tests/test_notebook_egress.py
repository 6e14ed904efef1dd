"""notebooks/egress_analysis.ipynb runs top to bottom on a lake built from synthetic traffic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

from pipeline.query.samplelake import build_sample_lake  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "egress_analysis.ipynb"
T0 = 1_795_730_400


def test_notebook_runs_on_a_synthetic_lake(tmp_path: Path, monkeypatch) -> None:
    lake = tmp_path / "lake"
    built = build_sample_lake(str(lake), T0, T0 + 3600, rate=3, seed=7)
    assert built.windows > 0
    monkeypatch.setenv("FLOWCTL_LAKE", str(lake))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ})  # raises CellExecutionError when any cell fails
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"{built.windows:,} window rows" in text
    assert "denied-by-policy:" in text
