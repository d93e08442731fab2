"""The store's shape (issue 15): all SQL in smppd/store/, one module per concern, none
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
