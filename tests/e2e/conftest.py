"""Fixtures of the browser tests: one JupyterLab server and one headless Chromium per session, a
page per test.

Select or skip them with `-m e2e` / `-m "not e2e"`. Chromium is Debian's (`/usr/bin/chromium`, or
`$DKM_CHROMIUM`), driven by the Playwright Python package: nothing is downloaded at run time.
Screenshots, the browser console and the server log go to build/e2e/.

The notebooks run on the smoke profile with a run cache of the session's own. `DKM_E2E_PROFILE=cpu`
runs them on that profile instead, against its cached runs ($DKM_RUNS_DIR or data/runs/, which the
sliders' new answers are added to) and a copy of its results tables (the committed ones are never
rewritten): how the notebooks answer on the default profile once its runs exist. The fixture
notebooks always run on smoke.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(
    0, str(Path(__file__).parent)
)  # e2e_server, e2e_page: importable under any import mode

from e2e_page import close_all, load_lab  # noqa: E402
from e2e_server import LabServer, copy_tree, port_is_free, venv_jupyter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
FIXTURES = Path(__file__).parent / "fixtures"
ARTEFACTS = REPO / "build" / "e2e"
CHROMIUM = os.environ.get("DKM_CHROMIUM", "/usr/bin/chromium")
# no sandbox as root; no background networking, updates or sync: the machine's network is closed
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 1000}
PROFILE = os.environ.get("DKM_E2E_PROFILE", "smoke")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end tests in JupyterLab with headless Chromium")


def profile_cache(tmp: Path) -> dict:
    """$DKM_RUNS_DIR (or data/runs/) as it is, and a copy of $DKM_RESULTS_DIR (or data/results/)."""
    results = tmp / "results"
    shutil.copytree(os.environ.get("DKM_RESULTS_DIR", REPO / "data" / "results"), results)
    return {
        "DKM_RUNS_DIR": os.environ.get("DKM_RUNS_DIR", str(REPO / "data" / "runs")),
        "DKM_RESULTS_DIR": str(results),
    }


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory, smoke_cache):
    """JupyterLab on 127.0.0.1:<free port> with a token, serving copies of the notebooks on
    PROFILE (smoke unless $DKM_E2E_PROFILE says otherwise)."""
    tmp = tmp_path_factory.mktemp("lab")
    env = smoke_cache if PROFILE == "smoke" else profile_cache(tmp)
    server = LabServer(venv_jupyter(), tmp, extra_env=env, profile=PROFILE)
    copy_tree(
        NOTEBOOKS, server.root / "notebooks"
    )  # sibling files; each test prepares its own notebook
    for nb in sorted(FIXTURES.glob("*.ipynb")):
        server.prepare(nb, "fixtures", profile="smoke")
    try:
        server.start()
    except Exception as err:
        pytest.fail(str(err), pytrace=False)
    yield server
    server.stop()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / "jupyter-server.log").write_text(server.log())
    assert port_is_free(server.port), f"port {server.port} still taken after the server stopped"


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} not found: `make setup` as root installs Debian's chromium "
            "(or set DKM_CHROMIUM; deselect these tests with -m 'not e2e')",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the Playwright Python package is missing: `make setup` installs it "
            "(or pip install playwright; never `playwright install`: Chromium is Debian's)",
            pytrace=False,
        )
    args = CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def lab_app(lab_server, browser):
    """One page with JupyterLab loaded (loading it costs ~10 s), shared by the tests; its console
    log."""
    context = browser.new_context(viewport=VIEWPORT)
    page, console = context.new_page(), []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    load_lab(page, lab_server)
    yield page, console
    context.close()


@pytest.fixture
def lab_page(request, lab_server, lab_app):
    """The JupyterLab page; after the test: screenshot and console saved, notebooks closed, kernels
    shut down."""
    page, console = lab_app
    console.clear()
    yield page
    name = request.node.name.replace("/", "_").replace("[", "-").rstrip("]")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(ARTEFACTS / f"{name}.png"))
        (ARTEFACTS / f"{name}.console.txt").write_text("\n".join(console))
        close_all(page)
    finally:
        lab_server.shutdown_kernels()
