"""The package's layers point one way: a module imports only from packages in lower layers.

``LAYERS`` is the layer order, bottom first (docs/architecture.md draws the same order, and the last
test checks that the drawing agrees). A unit is a top-level package or module of ``advseg``
(``advseg.training.variants.registry`` belongs to ``training``); units on the same line are peers
and import neither each other nor anything above them. Every ``.py`` under ``src/advseg`` is
parsed with :mod:`ast`; imports inside functions and ``if TYPE_CHECKING:`` blocks count like
top-level ones (they are dependencies all the same). Within a package modules may import each other,
but not in a cycle.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "advseg"

#: bottom first; units on one line are peers
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "ops"),
    ("checks",),
    ("io",),
    ("config",),
    ("data", "transforms", "metrics", "networks", "losses", "runtime"),
    ("inference", "evaluation"),
    ("training",),
    ("synthesis",),
    ("experiments",),
    ("cli",),
    ("__main__",),
)
LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. advseg.training.trainer
    target: str  # imported module (or package), e.g. advseg.inference.sliding
    path: Path
    line: int

    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}: {self.source} imports {self.target}"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py below ``package`` (packages by their __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def advseg_imports(package: Path = PACKAGE) -> list[Import]:
    """Every import of an advseg module anywhere in a file below ``package`` (top level, functions,
    classes, conditional blocks); ``from advseg.x import y`` names the submodule ``advseg.x.y`` when
    ``y`` is one, else ``advseg.x``."""
    modules = _modules(package)
    found: dict[Import, None] = {}  # one entry per (module, target, line), in file order
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                           for a in node.names]
            for target in targets:
                if (target == "advseg" or target.startswith("advseg.")) and target != name:
                    found[Import(name, target, path, node.lineno)] = None
    return list(found)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(imports: list[Import]) -> list[str]:
    """One line per import that leaves its unit for a unit that is not in a lower layer."""
    bad = []
    for imp in imports:
        src, dst = _unit(imp.source), _unit(imp.target)
        if src == dst or src == "":
            continue
        if src not in LAYER_OF or dst not in LAYER_OF:
            bad.append(f"{imp.where()} (add '{src if src not in LAYER_OF else dst}' to LAYERS)")
        elif LAYER_OF[dst] >= LAYER_OF[src]:
            kind = "a peer" if LAYER_OF[dst] == LAYER_OF[src] else "a higher layer"
            bad.append(f"{imp.where()} ({dst} is {kind} of {src})")
    return bad


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Sets of modules that import each other, directly or through others (Tarjan's SCCs > 1)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in _modules()} - {""}
    assert units <= set(LAYER_OF), f"packages without a layer: {sorted(units - set(LAYER_OF))}"


def test_imports_point_down() -> None:
    bad = upward_imports(advseg_imports())
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    imports = advseg_imports()
    cycles = import_cycles(imports)
    lines = [f"{' <-> '.join(c)}:\n  " + "\n  ".join(
        i.where() for i in imports if i.source in c and i.target in c) for c in cycles]
    assert not cycles, "modules that import each other:\n" + "\n".join(lines)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "advseg"
    (pkg / "io").mkdir(parents=True)
    (pkg / "training").mkdir()
    for d in (pkg, pkg / "io", pkg / "training"):
        (d / "__init__.py").write_text("")
    (pkg / "io" / "nifti.py").write_text("def f():\n    from advseg.training import trainer\n")
    (pkg / "training" / "trainer.py").write_text("from advseg.io.nifti import f\n")
    imports = advseg_imports(pkg)
    bad = upward_imports(imports)
    assert len(bad) == 1 and "advseg.io.nifti imports advseg.training.trainer" in bad[0]
    assert "training is a higher layer of io" in bad[0]
    assert import_cycles(imports) == [["advseg.io.nifti", "advseg.training.trainer"]]


def test_architecture_doc_draws_the_same_order() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"## Layer order.*?```text\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md: no '## Layer order' section with a ```text block"
    drawn = [tuple(re.findall(r"[\w]+", line)) for line in block.group(1).splitlines() if line.strip()]
    assert drawn == list(reversed(LAYERS)), f"docs/architecture.md draws {drawn}, LAYERS (top first) " \
                                            f"is {list(reversed(LAYERS))}"
