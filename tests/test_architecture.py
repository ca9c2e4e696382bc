"""docs/ARCHITECTURE.md names every module of the package, names nothing that does not exist, and states each
floor's imports as they are; the links, module names and test names in README.md and docs/*.md resolve."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "blockswap"
DOC = REPO / "docs" / "ARCHITECTURE.md"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# a module written as its path under src/blockswap/ (`space/blocks.py`, `cli.py`) or a folder (`scoring/fused/`)
MODULE_PATH = re.compile(r"[a-z_][a-z0-9_]*(?:/[a-z_][a-z0-9_]*)*(?:\.py|/)")


def prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", path.read_text())


def package_modules(root: Path = PACKAGE) -> list[str]:
    """Every .py file of the package, as its path under the package folder."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def named_paths(text: str) -> set[str]:
    return {span for span in CODE.findall(text) if MODULE_PATH.fullmatch(span)}


def undocumented(text: str, root: Path = PACKAGE) -> list[str]:
    """The modules under `root` the text does not name. A package whose __init__.py holds only its docstring is
    named by its folder (`space/`); every other module by its path (`space/blocks.py`, `data/__init__.py`)."""
    names = named_paths(text)
    missing = []
    for module in package_modules(root):
        path = root / module
        if path.name == "__init__.py" and path.parent != root and docstring_only(path):
            wanted = f"{path.parent.relative_to(root)}/"
        else:
            wanted = module
        if wanted not in names:
            missing.append(wanted)
    return missing


def nonexistent(text: str, root: Path = PACKAGE) -> list[str]:
    """The paths the text names that are neither under the package nor under the repository."""
    return sorted(n for n in named_paths(text) if not (root / n).exists() and not (REPO / n).exists())


def test_every_module_is_in_the_architecture_page() -> None:
    missing = undocumented(prose(DOC))
    assert missing == [], f"add these to docs/ARCHITECTURE.md (one line each, in their floor's paragraph): {missing}"


def test_every_module_the_architecture_page_names_exists() -> None:
    assert nonexistent(prose(DOC)) == []


def test_the_check_fails_for_an_added_module_and_a_removed_one(tmp_path: Path) -> None:
    root = tmp_path / "blockswap"
    (root / "space").mkdir(parents=True)
    (root / "__init__.py").write_text('"""API."""\nfrom .space import blocks\n')
    (root / "space" / "__init__.py").write_text('"""The space."""\n')
    (root / "space" / "blocks.py").write_text("X = 1\n")
    text = "`__init__.py` holds the API. `space/`: `space/blocks.py`."
    assert undocumented(text, root) == [] and nonexistent(text, root) == []
    (root / "space" / "registry.py").write_text("Y = 2\n")
    assert undocumented(text, root) == ["space/registry.py"]
    (root / "space" / "__init__.py").write_text('"""The space."""\nfrom .blocks import X\n')
    assert "space/__init__.py" in undocumented(text, root)
    assert nonexistent(text + " `space/gone.py`", root) == ["space/gone.py"]


# --- each floor's imports, as the page states them ----------------------------------------------------------

def floors() -> list[str]:
    """The floors in tests/test_layers.py's order (lowest first)."""
    tree = ast.parse((REPO / "tests" / "test_layers.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FLOORS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("tests/test_layers.py has no FLOORS")


def floor_paragraphs() -> dict[str, str]:
    """floor -> its paragraph on the page (the one opening with **`floor/`: ...**), in page order."""
    found = {}
    for paragraph in prose(DOC).split("\n\n"):
        m = re.match(r"\*\*`([a-z_]+)/`:", paragraph.strip())
        if m:
            found[m.group(1)] = " ".join(paragraph.split())
    return found


def imported_floors(floor: str) -> set[str]:
    """The other top-level folders of the package that the modules of `floor` import (function-level too)."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found = set()
    for path in (PACKAGE / floor).rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)  # e.g. ["search", "run"]
        package = parts[:-1]  # the package a relative import starts from (a package's own, for __init__.py)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                elif (node.module or "").startswith("blockswap."):
                    base = node.module.split(".")[1:]
                else:
                    continue
                targets = [base[0]] if base else [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("blockswap.")]
            else:
                continue
            found |= {t for t in targets if t in folders and t != floor}
    return found


def stated_floors(paragraph: str) -> set[str]:
    """The folders named in the paragraph's closing `Imports: ...` sentence."""
    m = re.search(r"Imports: (.*)$", paragraph)
    assert m, f"no 'Imports:' sentence closes: {paragraph[:60]}..."
    return {span.split("/")[0] for span in CODE.findall(m.group(1))}


def test_the_floors_are_described_in_their_order() -> None:
    assert list(floor_paragraphs()) == floors()
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert sorted(floors()) == folders


def test_each_floor_imports_what_the_page_says() -> None:
    wrong = {}
    for floor, paragraph in floor_paragraphs().items():
        stated = stated_floors(paragraph) - {floor}
        actual = imported_floors(floor)
        if stated != actual:
            wrong[floor] = {"page says": sorted(stated), "code imports": sorted(actual)}
    assert wrong == {}


# --- links and names in README.md and docs/*.md -------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of `page`: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"{page.relative_to(REPO)}: {target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{page.relative_to(REPO)}: {target}: no heading #{anchor} in {path.name}")
    return problems


def test_relative_links_resolve_to_files_and_headings() -> None:
    assert [p for page in PAGES for p in broken_links(page)] == []


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Budgets, data and bad input\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#budgets-data-and-bad-input) [x](a.md#not-a-heading) [y](gone.md) [z](#title)\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert broken_links(page) == ["b.md: a.md#not-a-heading: no heading #not-a-heading in a.md",
                                      "b.md: gone.md: no such file", "b.md: #title: no heading #title in b.md"]
    finally:
        REPO = saved


def test_the_readme_links_every_docs_page() -> None:
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(prose(REPO / "README.md"))}
    assert sorted(p.name for p in (REPO / "docs").glob("*.md") if p.name not in linked) == []


def test_names_in_the_pages_exist() -> None:
    """`bs.NAME`, `blockswap.module[.name]`, `tests/test_x.py::test_name` and repository paths in prose resolve."""
    sys.path.insert(0, str(REPO / "src"))
    bs = importlib.import_module("blockswap")
    problems = []
    for page in PAGES:
        text = prose(page)
        where = page.relative_to(REPO)
        for name in set(re.findall(r"\bbs\.([A-Za-z_]\w*)", text)):
            if not hasattr(bs, name):
                problems.append(f"{where}: bs.{name}")
        for dotted in set(re.findall(r"`(blockswap(?:\.[A-Za-z_]\w*)+)", text)):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for attr in parts[cut:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    problems.append(f"{where}: {dotted}")
                break
        for file, test in set(re.findall(r"(tests/\w+\.py)::(\w+)", text)):
            if not (REPO / file).exists() or not re.search(rf"^def {test}\(", (REPO / file).read_text(), re.M):
                problems.append(f"{where}: {file}::{test}")
        for span in CODE.findall(text):
            if re.fullmatch(r"(?:tests|benchmarks|studies|docs|src)/[\w./-]*", span) and not (REPO / span).exists():
                problems.append(f"{where}: {span}")
    assert problems == []


def defined_names(root: Path = PACKAGE) -> set[str]:
    """Every name the package defines or imports: functions, classes, assigned names and attributes, modules."""
    names = {root.name} | {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                names.add(node.id if isinstance(node, ast.Name) else node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_the_functions_and_classes_the_architecture_page_names_exist() -> None:
    """`run_search`, `Genotype.build`, `rescored()`: every identifier in the page's inline code is still defined."""
    defined = defined_names()
    stale = set()
    for span in CODE.findall(prose(DOC)):
        span = span.removesuffix("()")
        if re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", span) and not re.search(
                r"\.(py|csv|json|jsonl|pt|png|md)$", span):
            stale |= {part for part in span.split(".") if part not in defined}
    assert sorted(stale) == []
