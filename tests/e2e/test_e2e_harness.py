"""The browser harness proven on fixture notebooks: it sees sliders drive figures, and it sees them
fail."""

from __future__ import annotations

import socket

import pytest
from e2e_page import (
    ANSWER_BOUND_S,
    FigureDidNotChange,
    NotebookError,
    SlowAnswer,
    check_notebook,
    check_slider,
    open_notebook,
    run_all,
    sliders,
    wait_rendered,
)
from e2e_server import LabServer, ServerDidNotStart, port_is_free, venv_jupyter

pytestmark = pytest.mark.e2e


def test_fixture_sliders_drive_their_figures(lab_page, lab_server):
    report = check_notebook(lab_page, lab_server, "fixtures/sliders.ipynb")
    records = report["sliders"]
    # cells: title, parameters, injected parameters, imports, then FigureWidget, interactive_output,
    # and slider + re-train button: each slider changes the figure in its own cell
    assert [
        (r["cell"], r["slider"], r["from"], r["to"], r["changed"], r["button"]) for r in records
    ] == [
        (4, "power", "1", "2", ["cell 4 figure 1"], False),
        (5, "K", "2.00", "2.50", ["cell 5 figure 1"], False),
        (6, "lam", "0.100", "0.126", ["cell 6 figure 1"], True),
    ]
    # each slider answered one step up and one back; the button slider's answer is the way back's
    assert all(0 < r[k] < ANSWER_BOUND_S for r in records for k in ("seconds", "back_seconds"))
    assert [r["answer_s"] for r in records] == [
        max(records[0]["seconds"], records[0]["back_seconds"]),
        max(records[1]["seconds"], records[1]["back_seconds"]),
        records[2]["back_seconds"],
    ]
    assert report["slow"] == []


def test_slow_answer_is_detected(lab_page, lab_server):
    open_notebook(lab_page, lab_server, "fixtures/sliders.ipynb")
    run_all(lab_page)
    wait_rendered(lab_page)
    power = sliders(lab_page)[0]
    with pytest.raises(
        SlowAnswer,
        match=r"cell 4: slider 'power' 1 -> 2 and back: a figure changed \d+\.\d s after the move, "
        r"allowed 0 s",
    ):
        check_slider(lab_page, power, bound=0.0)


def test_broken_callbacks_and_failing_cell_are_detected(lab_page, lab_server):
    open_notebook(lab_page, lab_server, "fixtures/broken.ipynb")
    with pytest.raises(NotebookError, match=r"(?s)cell 6 .*ZeroDivisionError: broken on purpose"):
        run_all(lab_page)
    wait_rendered(lab_page)
    dead, raising = sliders(lab_page)
    with pytest.raises(
        FigureDidNotChange,
        match=r"cell 4: slider 'power' moved 1 -> 2 but the data of none of the 1 figures "
        r"\['cell 4 figure 1'\] changed \(layout only: \[\];.*\) within 5 s",
    ):
        check_slider(lab_page, dead, timeout=5.0)
    with pytest.raises(
        NotebookError,
        match=r"(?s)cell 5: slider 'raises' 1 -> 2: the kernel raised:.*"
        r"ValueError: callback broken on purpose",
    ):
        check_slider(lab_page, raising, timeout=5.0)


def test_server_that_cannot_start_fails_with_its_log(tmp_path):
    server = LabServer(venv_jupyter(), tmp_path)
    with socket.socket() as squatter:  # the chosen port taken between choice and start
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        log_says = f"could not be started because port {server.port} is not available"
        with pytest.raises(
            ServerDidNotStart, match=rf"(?s)exited with code 1.*--- server log ---.*{log_says}"
        ):
            server.start(timeout=60)
    assert server.proc.poll() is not None and port_is_free(server.port)
