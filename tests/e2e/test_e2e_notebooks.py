"""Each teaching notebook in JupyterLab: Run All without error, then every slider changes a plotly
figure."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_page import check_notebook

pytestmark = pytest.mark.e2e

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NUMBERS = ("01", "02", "03", "04", "05")


@pytest.mark.parametrize("number", NUMBERS)
def test_notebook_sliders_drive_figures(number, lab_page, lab_server):
    found = sorted(NOTEBOOKS.glob(f"{number}_*.ipynb"))
    assert len(found) == 1, f"expected one notebooks/{number}_*.ipynb, found {found}"
    (src,) = found
    report = check_notebook(lab_page, lab_server, lab_server.prepare(src, "notebooks"))
    print(f"{src.name}: seconds {report['seconds']}", *report["sliders"], sep="\n  ")
    moved = [r for r in report["sliders"] if "skipped" not in r]
    assert moved and all(r["changed"] for r in moved)
