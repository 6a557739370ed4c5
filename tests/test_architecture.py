"""The layering of the packages, checked on the source: an AST import graph of shared/,
datasite/, researcher/ and demo/.

Every ``import`` and ``from ... import`` counts, also those inside functions (a lazy import
still couples the modules, it only hides the circle from the interpreter), relative imports
resolved; ``from pkg import sub`` is an edge to the submodule ``pkg.sub`` when that is a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "datasite", "researcher", "demo")

# Import cycles inside shared/ that exist today, as strongly connected components.
# A RATCHET: this list may only shrink. The test fails if a new cycle appears, if a listed one
# grows, and also if a listed one shrank or vanished (then shrink or remove it here).
KNOWN_SHARED_CYCLES: list[frozenset[str]] = [
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES if (ROOT / pkg).is_dir()
            for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports: ours resolved to the module, others by their full name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def ours(target: str) -> str:
        # `import a.b.c` where a.b.c is a module (or a name in one): the longest known prefix
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in known:
                return ".".join(parts[:i])
        return target

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(ours(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else ours(mod))
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the modules it imports (ours and third-party)."""
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]], within: set[str]) -> list[frozenset[str]]:
    """The import cycles among ``within``: its strongly connected components of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graphs here are small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in within:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(within):
        if v not in index:
            visit(v)
    return found


def _in(pkg: str, module: str) -> bool:
    return module == pkg or module.startswith(pkg + ".")


def _members(graph, *pkgs) -> set[str]:
    return {m for m in graph if any(_in(p, m) for p in pkgs)}


def test_the_graph_sees_the_imports_it_should():
    """The checks below mean something only if the graph has the edges (a sanity check)."""
    g = import_graph()
    assert "datasite.review" in g["datasite.owner"]           # relative, module level
    assert "datasite.rounds" in g["datasite.run_once"]        # relative, inside a method
    assert "datasite.inbox" in g["datasite.review"]           # `from . import inbox`
    assert "datasite.owner" in g["datasite.round_server"]
    assert any(_in("researcher", m) for m in g["demo.run"])


def test_no_import_cycle_in_datasite_or_researcher():
    g = import_graph()
    found = cycles(g, _members(g, "datasite", "researcher", "demo", "shared"))
    bad = [sorted(c) for c in found if any(_in(p, m) for m in c for p in ("datasite", "researcher"))]
    assert not bad, ("import cycles among datasite/researcher modules: "
                     f"{bad}; move the shared piece into a module both can import")


def test_datasite_does_not_import_researcher():
    g = import_graph()
    bad = {m: sorted(t for t in g[m] if _in("researcher", t)) for m in _members(g, "datasite")}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, (f"datasite modules import the researcher's package: {bad}; the owner's "
                     "side must not depend on the client (code both need goes in shared/)")


def test_shared_imports_no_syft_datasite_or_researcher():
    g = import_graph()
    bad = {m: sorted(t for t in g[m] if any(_in(p, t) for p in ("syft", "datasite", "researcher")))
           for m in _members(g, "shared")}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, (f"shared modules import {bad}; shared/ is the common layer (the job runner "
                     "and both sides use it) and may depend on neither side nor on syft")


def test_shared_cycles_only_shrink():
    g = import_graph()
    found = cycles(g, _members(g, "shared"))
    new = [sorted(c) for c in found if not any(c <= k for k in KNOWN_SHARED_CYCLES)]
    assert not new, (f"new or grown import cycles in shared/: {new}; break them (move the "
                     "common piece into a module both import) rather than listing them")
    stale = [sorted(k) for k in KNOWN_SHARED_CYCLES if k not in found]
    assert not stale, (f"KNOWN_SHARED_CYCLES lists {stale}, which shrank or is gone: replace "
                       f"it with what remains of it in {sorted(map(sorted, found))}")


def _calls_and_compares(pkg: str):
    for name, path in _modules().items():
        if _in(pkg, name):
            yield name, ast.parse(path.read_text())


def test_only_the_release_gate_deposits_results():
    """Everything a researcher receives goes through datasite.release_gate (public views only)."""
    bad = sorted(name for name, tree in _calls_and_compares("datasite")
                 if name != "datasite.release_gate" and any(
                     isinstance(n, ast.Attribute) and n.attr == "deposit_result"
                     for n in ast.walk(tree)))
    assert not bad, (f"{bad} call deposit_result directly; deposit through "
                     "datasite.release_gate.deposit, which releases only the public view")


def test_owner_side_never_asks_for_a_job_kind_by_name():
    """Kind differences reach datasite/ through hooks on the spec (LIFECYCLE,
    UPDATED_ON_FORGET, context_sources, public_payload), never `kind == "..."`."""
    from shared.jobs import SPEC_KINDS

    kinds = set(SPEC_KINDS)
    bad = []
    for name, tree in _calls_and_compares("datasite"):
        for n in ast.walk(tree):
            if isinstance(n, ast.Compare):
                consts = [c for c in [n.left, *n.comparators] if isinstance(c, ast.Constant)]
                consts += [e for c in n.comparators if isinstance(c, (ast.Tuple, ast.Set, ast.List))
                           for e in c.elts if isinstance(e, ast.Constant)]
                bad += [f"{name}:{n.lineno} {c.value!r}" for c in consts if c.value in kinds]
    assert not bad, f"datasite/ compares against job kind names: {bad}; add a hook on the spec"


def test_no_private_name_is_imported_across_modules():
    known = set(_modules())
    bad = []
    for name, path in _modules().items():
        for n in ast.walk(ast.parse(path.read_text())):
            if not isinstance(n, ast.ImportFrom):
                continue
            base = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(max(n.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = (f"{base}.{n.module}" if n.module else base) if n.level else n.module
            if not any(target == k or target.startswith(k + ".") for k in known):
                continue  # a third-party module: its underscores are its own business
            bad += [f"{name}: from {target} import {a.name}" for a in n.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, f"private names used across modules: {bad}; make them public or move them"
