"""The map of who may import whom: the method core, then the wings on their floors.

The core (`dkm/*.py`) is the paper and imports only itself; each wing imports the core and the
wings on lower floors (or its own modules); nothing imports in a circle. The compiled k-means
plugs into the core through one hook (`dkm.clustering._Hook`: `_fast` and `_nb`), loaded on first
use."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dkm"
CORE = {"rows", "regularizer", "clustering", "sharing", "plans", "planner", "accounting", "_checks",
        "_numerics"}  # fmt: skip
FLOORS = {  # wing -> floor; a wing may import wings on lower floors
    "core": 0,
    "fast": 1,
    "io": 1,
    "training": 2,
    "export": 3,
    "energy": 3,
    "experiments": 4,
    "viz": 5,
    "app": 6,
    "__main__": 7,
}
CORE_LINE_BUDGET = 2500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # dkm itself: the public face of the core
    return "core" if parts[1] in CORE else parts[1]


def _imports(module: str) -> set:
    """The dkm modules `module` imports, anywhere in the file (absolute imports only; those
    under `if TYPE_CHECKING:` are for annotations and never run)."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: a relative import (the package imports absolutely)"
            base = node.module or ""
            if base == "dkm" or base.startswith("dkm."):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dkm"))
    return found - {module}


def test_every_module_is_in_the_core_or_a_wing():
    wings = {_wing(m) for m in MODULES}
    assert wings <= set(FLOORS), f"wings without a floor: {wings - set(FLOORS)}"
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == CORE, f"top-level modules that are not the method: {top - CORE}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_to_the_core_or_lower_wings_only(module):
    wing = _wing(module)
    bad = sorted(
        m
        for m in _imports(module)
        if _wing(m) != wing and FLOORS[_wing(m)] >= FLOORS[wing] and m != "dkm"
    )
    assert not bad, f"{module} ({wing}, floor {FLOORS[wing]}) imports {bad}"


def test_the_core_imports_no_wing_and_the_fast_path_plugs_in_through_one_hook():
    for module in MODULES:
        if _wing(module) == "core":
            wings = {_wing(m) for m in _imports(module)} - {"core"}
            assert not wings, f"{module} imports the wings {wings}"
    hooks = [m for m in MODULES if _wing(m) == "core" and '"dkm.fast' in MODULES[m].read_text()]
    assert hooks == ["dkm.clustering"]


def test_no_import_circles():
    graph = {m: _imports(m) & set(MODULES) for m in MODULES}
    state: dict = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import circle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for n in sorted(graph[m]):
            if n != "dkm" or m == "dkm":  # `dkm` (the face) is where every import starts
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


def test_the_core_is_short():
    lines = sum(len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py"))
    assert lines <= CORE_LINE_BUDGET, f"dkm/*.py holds {lines} lines (budget {CORE_LINE_BUDGET})"


def test_reading_the_method_imports_no_numba_ddp_or_checkpointing():
    code = (
        "import sys, dkm, dkm.regularizer, dkm.sharing, dkm.planner\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'numba' or (m.startswith"
        "('dkm.') and m.split('.')[1] not in " + repr(sorted(CORE)) + "))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
