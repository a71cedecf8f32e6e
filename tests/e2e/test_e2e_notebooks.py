"""Each teaching notebook in JupyterLab: Run All without error, then every slider changes a plotly
figure, each answer within e2e_page.ANSWER_BOUND_S.

The answer times are printed and collected in build/e2e/answer_times.json (one entry per notebook,
kept across runs of the same profile), where the README's list of them comes from.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest
from e2e_page import ANSWER_BOUND_S, check_notebook

from dkm.io import write_atomic

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
NUMBERS = ("01", "02", "03", "04", "05")
ANSWER_TIMES = REPO / "build" / "e2e" / "answer_times.json"
GOAL_S = 2.0  # the README's goal for an answer on the default profile


def record_answers(name: str, profile: str, report: dict, path: Path = ANSWER_TIMES) -> dict:
    """Merge one notebook's slider records into `path` (entries of another profile are dropped)."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if table.get("profile") != profile:
        table = {"profile": profile, "notebooks": {}}
    table.update(bound_s=ANSWER_BOUND_S, goal_s=GOAL_S, machine=platform.platform(),
                 cpus=os.cpu_count())  # fmt: skip
    table["notebooks"][name] = {"sliders": report["sliders"], "seconds": report["seconds"]}
    write_atomic(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


@pytest.mark.parametrize("number", NUMBERS)
def test_notebook_sliders_drive_figures(number, lab_page, lab_server):
    found = sorted(NOTEBOOKS.glob(f"{number}_*.ipynb"))
    assert len(found) == 1, f"expected one notebooks/{number}_*.ipynb, found {found}"
    (src,) = found
    report = check_notebook(lab_page, lab_server, lab_server.prepare(src, "notebooks"))
    record_answers(src.name, lab_server.profile, report)
    print(f"{src.name} on {lab_server.profile}: seconds {report['seconds']}")
    for r in report["sliders"]:
        print(f"  {r}")
    moved = [r for r in report["sliders"] if "skipped" not in r]
    assert moved and all(r["changed"] for r in moved)
    assert not report["slow"], "\n".join(report["slow"])
