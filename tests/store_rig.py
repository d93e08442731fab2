"""Store helpers shared by test modules: a message to take in, a small disk to fill."""

from __future__ import annotations

from pathlib import Path

from smppd.store import NewMessage


def new(b24_id: str = "a" * 32, segments: int = 1, reason: str | None = None, member: str = "m1") -> NewMessage:
    return NewMessage(member_id=member, b24_id=b24_id, code="by_life", route="life", sender="Shop",
                      phone=None if reason else "+375291234567", text="hello", encoding="gsm7",
                      segments=segments, reason=reason)


def fill(state: Path) -> Path:
    filler = state / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler
