"""The conda environment, pyproject.toml, Makefile and CI script agree with each other and with the
README."""

from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple:
    r = Requirement(req)
    return (r.name.lower().replace("_", "-"), str(r.specifier))


def test_environment_pip_section_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_norm(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted, (
        f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    )
    assert "-e ." in pip, "environment.yml must install the package itself"
    assert "python=3.11" in env["dependencies"]


def test_pyproject_admits_the_pinned_torch():
    deps = {
        Requirement(r).name: Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert deps["torch"].specifier.contains("2.14.1")
    assert deps["torchvision"].specifier.contains("0.29.1")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()


def test_make_targets_depend_on_setup():
    make = (ROOT / "Makefile").read_text()
    for target in ("test", "bench", "lab"):
        line = next(ln for ln in make.splitlines() if ln.startswith(f"{target}:"))
        assert "setup" in line.split(":", 1)[1], f"make {target} must depend on setup"


def test_installed_packages_satisfy_pyproject():
    """Every runtime and dev dependency is installed here at a version pyproject.toml admits."""
    from importlib import metadata

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bad = []
    for req in map(Requirement, project["dependencies"] + project["optional-dependencies"]["dev"]):
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{req.name} is not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req.name} {version} is outside {req.specifier}")
    assert not bad, "; ".join(bad)


def test_the_distribution_has_a_name_of_its_own():
    """`pip install -e .` installs `deep-kmeans` (PyPI's `dkm` is another project); the import name
    and the `dkm` command stay, at the package's version."""
    from importlib import metadata

    import dkm

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "deep-kmeans" and project["version"] == dkm.__version__
    dist = metadata.distribution("deep-kmeans")
    assert dist.version == dkm.__version__
    assert [e.value for e in dist.entry_points if e.name == "dkm"] == ["dkm.app.cli:main"]
