"""Fixtures shared by every test directory."""

import pytest


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """A run cache and a results directory of this test's own (nothing committed is touched)."""
    monkeypatch.setenv("DKM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DKM_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """One run cache and results directory for every test that runs the notebooks on the smoke
    profile.

    tests/test_notebooks.py (papermill + nbval) and tests/e2e (JupyterLab) run the same smoke
    pipeline: whichever runs first computes it, the other reads it. Stage outputs are written
    atomically, so a reader never sees half a file. Keys cover the whole configuration, so sharing a
    cache cannot hand one a stale result.
    """
    root = tmp_path_factory.mktemp("smoke-cache")
    return {"DKM_RUNS_DIR": str(root / "runs"), "DKM_RESULTS_DIR": str(root / "results")}
