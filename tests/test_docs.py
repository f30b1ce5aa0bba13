"""The user documentation holds together: every relative link in README.md and docs/*.md points at a
file that exists (and at a heading of it, for ``#anchor`` links), and every page is in the site's nav."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (brackets there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading (mkdocs' toc gives the same for headings without ``--``)."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def broken_links(pages: list[Path]) -> list[str]:
    bad = []
    for page in pages:
        for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            where = f"{_shown(page)}: ({target})"
            if not dest.exists():
                bad.append(f"{where} -> no file {_shown(dest)}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{where} -> no heading '#{anchor}' in {dest.name}")
    return bad


def test_relative_links_point_at_existing_files_and_headings() -> None:
    bad = broken_links(_pages())
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A title\n[ok](a.md#a-title) [gone](b.md) [anchor](a.md#nope) "
                                   "`[code](x.md)` [web](https://example.org)\n")
    assert broken_links([tmp_path / "a.md"]) == [
        f"{tmp_path / 'a.md'}: (b.md) -> no file {tmp_path / 'b.md'}",
        f"{tmp_path / 'a.md'}: (a.md#nope) -> no heading '#nope' in a.md",
    ]


def test_every_page_is_in_the_site_nav() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    listed = {page for entry in nav for page in entry.values()}
    on_disk = {p.name for p in DOCS.glob("*.md")}
    assert on_disk <= listed, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - listed)}"
    assert listed <= on_disk, f"nav names missing pages: {sorted(listed - on_disk)}"



@pytest.fixture(scope="module")
def results_docs(tmp_path_factory: pytest.TempPathFactory):
    """``benchmarks/results_docs.py`` and the summaries it builds from the committed results."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_docs", ROOT / "benchmarks" / "results_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folders = module.generated_folders(sorted(DOCS.glob("*.md")))
    assert (ROOT / "benchmarks" / "results" / "hippocampus").resolve() in folders
    return module, {f: module.build_summary(f, tmp_path_factory.mktemp("tables")) for f in folders}


def test_generated_result_tables_in_the_docs_match_the_committed_results(results_docs) -> None:
    """The docs' tables of a matrix are rebuilt from the committed cell files: a result committed
    without ``python benchmarks/results_docs.py`` (or a hand edit of a table) fails here."""
    module, summaries = results_docs
    page = DOCS / "results.md"
    assert "<!-- generated: benchmarks/results/hippocampus |" in page.read_text()
    text, changed = module.update_page(page, summaries)
    assert changed == [], "run: python benchmarks/results_docs.py"
    assert text == page.read_text()


def test_the_generated_tables_check_can_fail(results_docs, tmp_path: Path) -> None:
    module, summaries = results_docs
    page = (DOCS / "results.md").read_text()
    block = page[page.index("<!-- generated: benchmarks/results/hippocampus"):]
    row = next(line for line in block.splitlines() if line.startswith("| res_unet_aux | 4 cases |"))
    stale = page.replace(row, row.replace("| res_unet_aux | 4 cases |", "| res_unet_aux | 5 cases |"), 1)
    assert stale != page
    (tmp_path / "results.md").write_text(stale)
    text, changed = module.update_page(tmp_path / "results.md", summaries)
    assert changed == [f"{tmp_path / 'results.md'}: benchmarks/results/hippocampus"]
    assert text == (DOCS / "results.md").read_text()  # the rewrite restores the generated table
