"""The shape of the code, held by a test so it cannot drift back.

Three rules of ``DESIGN.md`` ("Modules"): no import circle; parts never import
the daemon (``daemon.py`` wires them, so a part gets what it needs passed in);
the simulators in ``smppd.sims`` are the demo's and the tests' peers, never the
product's.  Imports are read with ``ast`` from the source, every one of them:
at module level, inside functions and under ``if TYPE_CHECKING:``, because a
circle that only type checkers or a late import see is still a circle to the
next engineer reading the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("smppd", "shim")

# The entry points: they start the daemon, so they may import it.
DAEMON = "smppd.daemon"
MAY_IMPORT_DAEMON = frozenset({"smppd.cli.run", "smppd.cli.demo"})

# The simulators and who may use them: the demo runs them as the peers of a
# real daemon on a fresh machine; the tests and bench/ (not walked here) too.
SIMS = "smppd.sims"
MAY_IMPORT_SIMS = frozenset({"smppd.cli.demo"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` (a module, or a name in one) lands in, if any."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of ours that ``module`` imports, anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import name`: name is a submodule or a name defined in pkg
            names = [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def _ties(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    members = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]


# --- the walker itself: it must see what the rules below rely on ----------------------


def test_walker_sees_relative_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import X\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..top import T\n"
        "def f():\n    from .. import top\n    import pkg.other\n")
    (pkg / "top.py").write_text("from pkg.sub import leaf\n")
    (pkg / "other.py").write_text("import os\n")
    known = {"pkg": pkg / "__init__.py", "pkg.sub": pkg / "sub" / "__init__.py",
             "pkg.sub.leaf": pkg / "sub" / "leaf.py", "pkg.top": pkg / "top.py", "pkg.other": pkg / "other.py"}
    graph = {m: imports_of(m, p, known) for m, p in known.items()}
    assert graph["pkg.sub.leaf"] == {"pkg.top", "pkg.other"}
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.top"] == {"pkg.sub.leaf"}
    assert circles(graph) == [["pkg.sub.leaf", "pkg.top"]]


def test_walker_reads_the_whole_product() -> None:
    graph = import_graph()
    assert {"smppd.daemon", "smppd.ops.metrics", "shim.app", "smppd.sims"} <= set(graph)
    assert "smppd.config" in graph["smppd.daemon"]


# --- the rules ------------------------------------------------------------------------


def test_no_import_circle() -> None:
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(
        f"  {', '.join(c)}\n    " + "\n    ".join(_ties(c, graph)) for c in found)


def test_parts_never_import_the_daemon() -> None:
    offenders = sorted(m for m, deps in import_graph().items()
                       if DAEMON in deps and m not in MAY_IMPORT_DAEMON)
    assert not offenders, (f"{offenders} import {DAEMON}: pass what the part needs in "
                           "(a typing.Protocol of the daemon-facing view, or callables); the daemon wires the parts")


def test_product_never_imports_the_simulators() -> None:
    offenders = sorted(
        f"{m} -> {d}" for m, deps in import_graph().items()
        if m not in MAY_IMPORT_SIMS and not (m == SIMS or m.startswith(SIMS + "."))
        for d in deps if d == SIMS or d.startswith(SIMS + ".")
    )
    assert not offenders, f"product code imports the simulators: {offenders}"


def test_tests_share_helpers_through_rigs_not_through_each_other() -> None:
    """A helper one test module imports from another is found by nobody who opens the first,
    and dies with the second: shared helpers live in ``tests/rigs/`` or ``conftest.py``."""
    known = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted((ROOT / "tests").rglob("*.py"))}
    offenders = sorted(
        f"{m} -> {d}" for m, p in known.items()
        for d in imports_of(m, p, known) if d.rpartition(".")[2].startswith("test_")
    )
    assert not offenders, f"test modules importing other test modules: {offenders}"
    assert "tests.rigs.session_rig" in imports_of("tests.smpp.test_session", known["tests.smpp.test_session"], known)
