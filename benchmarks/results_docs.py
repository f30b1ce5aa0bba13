"""Copy tables of a matrix's generated ``summary.md`` into the docs, so the docs never drift from the
committed cell results.

    python benchmarks/results_docs.py            # rewrite every generated block in docs/*.md
    python benchmarks/results_docs.py --check    # exit 1, naming the block, where one is stale

A generated block in a Markdown page is written between two comment lines::

    <!-- generated: benchmarks/results/hippocampus | DSC against ; HD95 against ; Cells -->
    ...
    <!-- end generated -->

The first names a folder of committed cell results and, after ``|``, the sections of its
``tables/summary.md`` to copy (each the start of a ``## `` heading there), in order. The tables are
rebuilt from the result files first (``advseg experiment <name> --aggregate --results <folder>``,
the experiment named by the folder, so its plan is known), into a temporary folder for ``--check``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^<!-- generated: (?P<folder>\S+) \| (?P<sections>.+?) -->$")
END = "<!-- end generated -->"


def summary_sections(summary: str) -> dict[str, list[str]]:
    """``## `` heading text -> the lines under it (to the next heading), blank lines trimmed."""
    out: dict[str, list[str]] = {}
    current = None
    for line in summary.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: _trim(v) for k, v in out.items()}


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def render_block(summary: str, wanted: list[str], where: str) -> list[str]:
    """The Markdown of one block: each wanted section's heading in bold, then its lines."""
    sections = summary_sections(summary)
    lines: list[str] = []
    for prefix in wanted:
        hits = [h for h in sections if h.startswith(prefix)]
        if len(hits) != 1:
            raise SystemExit(f"error: {where}: section {prefix!r} matches {len(hits)} headings of summary.md "
                             f"({', '.join(sections) or 'none'})")
        if lines:
            lines.append("")
        lines += [f"**{hits[0]}**", "", *sections[hits[0]]]
    return lines


def build_summary(folder: Path, out_dir: Path) -> str:
    """Aggregate the committed results of ``folder`` (counted against the plan of the experiment
    named by the folder, where there is one) into ``out_dir``; the text of its ``summary.md``."""
    from advseg.errors import InputError
    from advseg.experiments.aggregate import aggregate_folder
    from advseg.experiments.matrix import load_matrix_config, planned_cells

    try:
        planned = planned_cells(load_matrix_config(folder.name, check_data=False))
    except InputError:
        planned = None
    _, paths = aggregate_folder(folder, out_dir, planned=planned)
    return Path(paths["summary.md"]).read_text()


def update_page(page: Path, summaries: dict[Path, str]) -> tuple[str, list[str]]:
    """The page's text with every generated block rewritten, and the blocks that changed."""
    lines = page.read_text().splitlines()
    out: list[str] = []
    changed: list[str] = []
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        out.append(lines[i])
        i += 1
        if not m:
            continue
        try:
            end = lines.index(END, i)
        except ValueError:
            raise SystemExit(f"error: {page}: block '{m.group(0)}' has no '{END}' line") from None
        folder = (REPO / m.group("folder")).resolve()
        if folder not in summaries:
            raise SystemExit(f"error: {page}: {m.group('folder')} was not aggregated")
        wanted = [s.strip() for s in m.group("sections").split(";")]
        block = render_block(summaries[folder], wanted, f"{page}: {m.group('folder')}")
        if lines[i:end] != block:
            changed.append(f"{page}: {m.group('folder')}")
        out += block
        i = end
    return "\n".join(out) + "\n", changed


def generated_folders(pages: list[Path]) -> list[Path]:
    """The results folders the generated blocks of ``pages`` name."""
    return sorted({(REPO / m.group("folder")).resolve()
                   for p in pages for line in p.read_text().splitlines() if (m := BEGIN.match(line))})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale blocks (exit 1), write nothing")
    ap.add_argument("--docs", type=Path, default=REPO / "docs", help="folder of Markdown pages")
    args = ap.parse_args(argv)
    pages = sorted(args.docs.glob("*.md"))
    folders = generated_folders(pages)
    summaries: dict[Path, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, folder in enumerate(folders):
            # --check leaves the committed tables alone; a rewrite refreshes them too
            out_dir = Path(tmp) / str(k) if args.check else folder / "tables"
            summaries[folder] = build_summary(folder, out_dir)
    stale: list[str] = []
    for page in pages:
        text, changed = update_page(page, summaries)
        stale += changed
        if changed and not args.check:
            page.write_text(text)
    for s in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {s}")
    if args.check and stale:
        print("run: python benchmarks/results_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
