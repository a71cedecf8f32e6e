"""The README is the front door and the manual lives in docs/: the README short, with the two
commands and a link to every docs page; every relative link of the README, the docs and the
changelog points at a file; no module name from before the restructure is left; the changelog's
table of moved modules matches the package; CITATION.cff parses and names this version; and the
book renders every docs page, listed on its contents page, with links that resolve in the built
site."""

import re
from pathlib import Path

import mistune
import nbformat
import pytest
import yaml

import dkm
from dkm.app import book
from dkm.app.runner import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, ROOT / "CHANGELOG.md", *DOCS]
# module names of the flat layout before 0.2.0 that are no module now (dkm.energy and dkm.export
# are again, as wings)
OLD_NAMES = (
    "spectral train runs sweep plan authors _kmeans_numba _io checkpoint distributed data models "
    "evaluation _threads _allocator coding accelerators inventory energy_shares zigzag_ref "
    "nn_dataflow_ref energy_validation profiles pipeline study ray_sweep energy_savings figdata "
    "plots sliders saving tables cli notebooks book"
).split()
OLD_MODULE = re.compile(r"(?<![\w./-])dkm[./](" + "|".join(OLD_NAMES) + r")\b")


def _urls(text: str) -> list[str]:
    """The targets of every link and image of a markdown text, as the book's renderer reads it."""
    tokens = mistune.create_markdown(renderer="ast", plugins=["table", "url"])(text)
    found, stack = [], list(tokens)
    while stack:
        token = stack.pop()
        if token.get("type") in ("link", "image"):
            found.append(token["attrs"]["url"])
        stack.extend(token.get("children") or [])
    return found


def _relative(url: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", url) and not url.startswith(("#", "/"))


def test_readme_is_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "make figures" in text and "make test" in text
    assert "figures/fig05_cr_accuracy.png" in _urls(text)  # the headline figure


def test_every_docs_page_is_linked_from_the_readme():
    linked = {url.split("#")[0] for url in _urls(README.read_text())}
    assert DOCS, "no docs/*.md page"
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(path):
    broken = [
        url
        for url in _urls(path.read_text())
        if _relative(url) and not (path.parent / url.split("#")[0]).exists()
    ]
    assert not broken, f"{path.name}: links to nothing: {broken}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_no_module_name_from_before_the_restructure(path):
    old = sorted({m.group(0) for m in OLD_MODULE.finditer(path.read_text())})
    assert not old, f"{path.name} still names old modules: {old}"


def _defines(module_file: Path, name: str) -> bool:
    """Does the module define or import `name` (a function, class, constant)?"""
    pattern = rf"^\s*(def|class)\s+{name}\b|^\s*{name}\s*[:=]|^\s*(from|import)\s.*\b{name}\b"
    return re.search(pattern, module_file.read_text(), re.M) is not None


def _resolves(dotted: str) -> bool:
    """`dkm.a.b` names a module, or a name that the longest module prefix defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(".".join(parts[:cut]))
        if module is not None:
            return cut == len(parts) or _defines(module, parts[cut])
    return False


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_module_and_file_of_the_package_named_exists(path):
    text = path.read_text()
    files = [f for f in re.findall(r"\bdkm/[\w/]+\.py\b", text) if not (ROOT / f).is_file()]
    names = [n for n in set(re.findall(r"(?<![\w/-])dkm(?:\.\w+)+", text)) if not _resolves(n)]
    assert not files and not names, f"{path.name} names what does not exist: {files + names}"


def _moved_modules() -> dict:
    """{old module: new module} from the changelog's table (the first name of each cell)."""
    row = re.compile(r"^\s*\| `(dkm[\w.]*)` \| `(dkm[\w.]*)`", re.M)
    return dict(row.findall((ROOT / "CHANGELOG.md").read_text()))


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def test_changelog_lists_every_moved_module():
    moved = _moved_modules()
    assert len(moved) == 45, "the 45 flat modules of 0.1.1, each once"
    missing = [new for new in moved.values() if _module_file(new) is None]
    assert not missing, f"the changelog moves modules to files that do not exist: {missing}"
    # every module of the package is one of them, or named in the changelog as new (the wings'
    # own __init__ aside)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "dkm").rglob("*.py")
        if p.name != "__init__.py" or p.parent.name in ("dkm", "io")
    }
    unlisted = [m for m in modules - set(moved.values()) if f"`{m}`" not in changelog]
    assert not unlisted, f"modules the changelog does not name: {sorted(unlisted)}"


def test_citation_cff_parses_and_names_this_version():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "deep-kmeans" and cff["license"] == "MIT"
    assert str(cff["version"]) == dkm.__version__
    assert str(cff["date-released"]) == "2026-12-07"
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("Deep k-Means: Re-Training and Parameter Sharing")
    assert [a["family-names"] for a in paper["authors"]] == [
        "Wu", "Wang", "Wu", "Wang", "Veeraraghavan", "Lin"
    ]  # fmt: skip
    assert (paper["year"], paper["volume"], paper["start"], paper["end"]) == (2018, 80, 5363, 5372)
    assert "1806.09228" in str(paper["identifiers"])


# ---------------------------------------------------------------- the book renders the docs
def _tiny_notebook(name: str):
    """An executed notebook of one heading and one printed line: enough for a book page."""
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print(1)", execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), code]
    return nb


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    """The book of five one-cell notebooks (no notebook is run) and the real docs pages."""
    tmp = tmp_path_factory.mktemp("book")
    executed = tmp / "executed"
    executed.mkdir()
    for name in NOTEBOOKS:
        nbformat.write(_tiny_notebook(name), executed / f"{name}.ipynb")
    return book.build_book("smoke", executed=executed, out_dir=tmp / "site")


def _links(page: Path) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]*)"', page.read_text())


def test_every_docs_page_is_a_page_of_the_book(tiny_book):
    contents = _links(tiny_book)
    for name in NOTEBOOKS:
        assert f"{name}.html" in contents
    for doc in DOCS:
        page = tiny_book.parent / f"{doc.stem}.html"
        assert page.is_file() and f"{doc.stem}.html" in contents, doc.name
        assert "<h1" in page.read_text() and "index.html" in _links(page)
    # the manual in its reading order, after the notebooks
    assert contents[-len(DOCS) :] == [f"{p.stem}.html" for p in book.docs_pages()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_pages_links_resolve_in_the_book(tiny_book, doc):
    site, page = tiny_book.parent, tiny_book.parent / f"{doc.stem}.html"
    broken = []
    for url in filter(_relative, _links(page)):
        target, _, anchor = url.partition("#")
        path = (site / target) if target else page
        if not path.exists():
            broken.append(url)
        elif anchor and f'id="{anchor}"' not in path.read_text():
            broken.append(url)
    assert not broken, f"{page.name}: links to nothing in the book: {broken}"
    assert not [u for u in _links(page) if u.startswith(("http:", "https:", "//"))]  # offline


def test_links_to_docs_pages_and_notebooks_point_at_their_pages(tmp_path):
    docs, out = ROOT / "docs", tmp_path / "site"
    assert book.site_href("docs/method.md", ROOT, out, docs) == "method.html"
    assert book.site_href("method.md#the-rank-question", docs, out, docs) == (
        "method.html#the-rank-question"
    )
    assert book.site_href("../notebooks/02_retraining.ipynb", docs, out, docs) == (
        "02_retraining.html"
    )
    to_csv = book.site_href("../data/results/sweep_cpu.csv", docs, out, docs)
    assert (out / to_csv).resolve() == ROOT / "data" / "results" / "sweep_cpu.csv"
    for kept in ("https://arxiv.org/abs/1806.09228", "#top", "/etc/hosts"):
        assert book.site_href(kept, docs, out, docs) == kept


def test_a_docs_page_may_not_take_a_notebook_s_page(tmp_path):
    (tmp_path / "index.md").write_text("# index\n")
    with pytest.raises(book.BookError, match="index.html"):
        book.docs_pages(tmp_path)


def test_heading_ids_are_github_s_anchors():
    assert book.heading_id("The open question: the spectral relaxation and rank(W) ≤ s") == (
        "the-open-question-the-spectral-relaxation-and-rankw--s"
    )
    assert book.heading_id("Profiles (<code>dkm/experiments/profiles.py</code>)") == (
        "profiles-dkmexperimentsprofilespy"
    )
