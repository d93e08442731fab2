import pytest

from smppd import model
from smppd.model import (
    FINAL,
    Status,
    UnknownReceiptState,
    aggregate,
    bitrix24_status,
    may_advance,
    receipt_status,
)


@pytest.mark.parametrize(
    "ours, b24",
    [
        (Status.QUEUED, None),
        (Status.SUBMITTED, None),
        (Status.ACCEPTED, "sent"),
        (Status.DELIVERED, "delivered"),
        (Status.UNDELIVERED, "undelivered"),
        (Status.EXPIRED, "undelivered"),
        (Status.REJECTED, "failed"),
        (Status.FAILED, "failed"),
    ],
)
def test_bitrix24_mapping(ours, b24):
    assert bitrix24_status(ours) == b24


def test_statuses_never_move_backwards():
    assert may_advance(Status.QUEUED, Status.ACCEPTED)
    assert may_advance(Status.ACCEPTED, Status.DELIVERED)
    assert not may_advance(Status.DELIVERED, Status.ACCEPTED)  # late resp after the receipt
    assert not may_advance(Status.ACCEPTED, Status.ACCEPTED)
    for a in FINAL:
        for b in FINAL:
            assert not may_advance(a, b), "the first final word wins"


@pytest.mark.parametrize(
    "state, stat, expected",
    [
        (2, None, Status.DELIVERED),
        (None, "DELIVRD", Status.DELIVERED),
        (None, "delivered", Status.DELIVERED),  # A1 full names, any case
        (None, "UNDELIV", Status.UNDELIVERED),
        (None, "UNDELIVERABLE", Status.UNDELIVERED),
        (None, "EXPIRED", Status.EXPIRED),
        (None, "REJECTD", Status.REJECTED),
        (None, "REJECTED", Status.REJECTED),
        (None, "ACCEPTD", Status.ACCEPTED),
        (None, "ENROUTE", Status.ACCEPTED),
        (None, "UNKNOWN", Status.ACCEPTED),  # MTS: keep waiting
        (5, "DELIVRD", Status.UNDELIVERED),  # the TLV wins over the text
        (3, None, Status.EXPIRED),
        (8, None, Status.REJECTED),
        (42, "DELIVRD", Status.DELIVERED),  # unknown TLV value: the text decides
    ],
)
def test_receipt_status(state, stat, expected):
    assert receipt_status(state, stat) == expected


def test_unknown_receipt_state_is_an_error_not_a_guess():
    with pytest.raises(UnknownReceiptState):
        receipt_status(None, "BANANA")
    with pytest.raises(UnknownReceiptState):
        receipt_status(None, None)


def test_aggregate_several_segments():
    D, A, U, Q = Status.DELIVERED, Status.ACCEPTED, Status.UNDELIVERED, Status.QUEUED
    assert aggregate([D, D, D]) == D
    assert aggregate([D, A, D]) == A
    assert aggregate([D, U, A]) == U  # any failing segment fails the message
    assert aggregate([Q, A]) == Q
    assert aggregate([Status.REJECTED, U]) == Status.REJECTED


# --- status names have one home (issue 15) -----------------------------------------------


def _status_lists(path):
    """Where ``path`` spells out a tuple, list or set made of two or more of our status words."""
    import ast

    words = {s.value for s in model.Status}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            if all(isinstance(e, ast.Constant) and e.value in words for e in node.elts):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_status_names_are_listed_only_in_the_model(tmp_path):
    """A group of statuses (final, open, not delivered) spelled out beside the model is a copy
    that drifts when a status is added; every module asks ``smppd.model`` instead. The
    simulators speak their providers' words and are left out."""
    from pathlib import Path

    import smppd

    root = Path(smppd.__file__).parent
    paths = [p for p in sorted(root.rglob("*.py")) + sorted((root.parent / "shim").rglob("*.py"))
             if p != root / "model.py" and root / "sims" not in p.parents]
    assert len(paths) > 50
    assert [hit for p in paths for hit in _status_lists(p)] == []
    sample = tmp_path / "sample.py"
    sample.write_text('FINAL = ("delivered", "failed")\nHEADER = ("day", "delivered", "failed")\nX = {"queued"}\n')
    assert _status_lists(sample) == ["sample.py:1"]  # the check sees a copy, and only a copy
    assert model.OPEN | model.FINAL == set(model.Status) and not model.OPEN & model.FINAL
    assert model.UNDELIVERED_FINALS | model.FAILED_FINALS | {model.Status.DELIVERED} == model.FINAL
