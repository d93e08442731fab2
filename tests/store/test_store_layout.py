"""The store's shape (issue 15): all SQL in smppd/store/ (no other module imports an engine or
executes a statement), one module per concern, none
grown back into a 2,000-line file, and no module of the package reaching into another's
private names."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import smppd

ROOT = Path(smppd.__file__).parent
STORE = ROOT / "store"
SQL = re.compile(r"\b(SELECT\s.+?\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.S)
# The simulators are peers, not the product.
PEERS = ("sims/",)


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _sql_strings(path: Path) -> list[str]:
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.STRING and SQL.search(tok.string):
            found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}")
    return found


def test_sql_is_written_only_in_the_store():
    outside = [p for p in _modules(ROOT) if STORE not in p.parents]
    outside = [p for p in outside if not p.relative_to(ROOT).as_posix().startswith(PEERS)]
    found = [hit for p in outside for hit in _sql_strings(p)]
    assert found == [], f"SQL outside smppd/store/: {found}"
    # and the check sees SQL where there is some
    assert _sql_strings(STORE / "status.py") and _sql_strings(STORE / "intake.py")


ENGINES = frozenset({"sqlite3", "aiosqlite", "psycopg", "psycopg2", "asyncpg"})
EXECUTE = frozenset({"execute", "executemany", "executescript", "fetch", "fetchrow", "fetchval"})
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|REPLACE|PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|CREATE|DROP|"
                       r"ALTER|VACUUM|ATTACH|WITH)\b", re.I)
SHIM = ROOT.parent / "shim"


def _engine_imports(path: Path) -> list[str]:
    """Where ``path`` imports a database engine (``import sqlite3``, ``from aiosqlite import ...``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in ENGINES]
    return found


def _sql_executions(path: Path) -> list[str]:
    """Where ``path`` calls ``<anything>.execute(...)`` (or executemany, ...) with a statement
    that has an SQL keyword in it, literal or f-string, whole or in pieces."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTE
                and node.args):
            texts = [c.value for c in ast.walk(node.args[0]) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if any(SQL_WORDS.search(text) for text in texts):
                found.append(f"{path.name}:{node.lineno}")
    return found


def _outside_the_store() -> list[Path]:
    return [p for p in _modules(ROOT) + _modules(SHIM) if STORE not in p.parents]


def test_no_module_outside_the_store_imports_a_database_engine():
    found = [hit for p in _outside_the_store() for hit in _engine_imports(p)]
    assert found == [], f"a database engine imported outside smppd/store/: {found}"
    # and the check sees an engine where there is one
    assert _engine_imports(STORE / "sqlite.py") and _engine_imports(STORE / "postgres.py")


def test_no_module_outside_the_store_executes_sql():
    found = [hit for p in _outside_the_store() for hit in _sql_executions(p)]
    assert found == [], f"SQL executed outside smppd/store/: {found}"
    # and the check sees SQL being executed where it is (a plain string, an f-string, a PRAGMA)
    reader = _sql_executions(STORE / "reader.py")
    assert len(reader) >= 5, reader
    assert _sql_executions(STORE / "schema.py")


def test_the_checks_catch_what_they_look_for(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("import sqlite3 as db\nfrom aiosqlite import connect\n"
                      "def f(conn, t):\n    conn.execute(f'select x from {t}')\n    conn.execute('pragma query_only=1')\n"
                      "    conn.execute(QUERY)\n    pool.execute('work')\n")
    assert [h.split()[1] for h in _engine_imports(sample)] == ["sqlite3", "aiosqlite"]
    assert _sql_executions(sample) == ["sample.py:4", "sample.py:5"]


def test_no_store_module_is_over_500_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in _modules(STORE)}
    assert len(sizes) >= 8, sizes
    assert {n: s for n, s in sizes.items() if s > 500} == {}


def test_store_modules_import_no_private_names_of_each_other():
    private = []
    for p in _modules(STORE):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                private += [f"{p.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_the_message_records_live_in_model_and_the_store_hands_out_the_same_ones():
    from smppd import model, store

    for name in ("NewMessage", "IntakeResult", "OpenMessage", "ReceiptRules", "Unreceipted", "PollItem",
                 "OutboxItem", "PortalRecord", "StoredAppEvent"):
        record = getattr(model, name)
        assert record.__module__ == "smppd.model", name
        assert getattr(store, name) is record, name
