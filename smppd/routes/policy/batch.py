"""How an HTTP route groups messages into requests: sans-I/O, the caller passes ``now``.

SMS.ru and SMSC.ru take up to 100 numbers per request when the sender and the
text are the same; one request for many numbers is what keeps a route inside the
provider's request rate. ``Batcher`` groups, the route (``routes/http.py``) sends
what ``due`` hands it and sleeps until ``next_deadline``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Collection

from ...model import OpenMessage


@dataclass(frozen=True)
class Job:
    """One message waiting for its request; ``channel`` is ``sms`` or ``viber``."""

    message: OpenMessage
    channel: str = "sms"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.message.sender, self.message.text, self.channel)


@dataclass
class Batch:
    key: tuple[str, str, str]
    opened_at: float
    jobs: list[Job] = field(default_factory=list)
    phones: set[str] = field(default_factory=set)


class Batcher:
    """Groups jobs with the same sender, text and channel into one request.

    Sans-I/O: the caller passes the time.  A batch goes out when it is full or
    ``interval`` seconds after its first job.  One number appears at most once
    per batch, so every per-number answer maps back to exactly one message.
    """

    def __init__(self, size: int, interval: float) -> None:
        self.size = max(1, size)
        self.interval = interval
        self._open: dict[tuple[str, str, str], list[Batch]] = {}
        self._ready: deque[Batch] = deque()

    def add(self, job: Job, now: float) -> None:
        batches = self._open.setdefault(job.key, [])
        batch = next((b for b in batches if job.message.phone not in b.phones), None)
        if batch is None:
            batch = Batch(job.key, now)
            batches.append(batch)
        batch.jobs.append(job)
        batch.phones.add(job.message.phone)
        if len(batch.jobs) >= self.size:
            batches.remove(batch)
            self._ready.append(batch)
        if not batches:
            del self._open[job.key]

    def due(self, now: float) -> list[Batch]:
        """Every batch that should go now: the full ones, then the ones that waited long enough."""
        out = list(self._ready)
        self._ready.clear()
        for key in list(self._open):
            keep = []
            for b in self._open[key]:
                (out if now - b.opened_at >= self.interval else keep).append(b)
            if keep:
                self._open[key] = keep
            else:
                del self._open[key]
        return out

    def next_deadline(self) -> float | None:
        if self._ready:
            return 0.0
        times = [b.opened_at + self.interval for bs in self._open.values() for b in bs]
        return min(times) if times else None

    def remove(self, row_ids: Collection[int]) -> int:
        """Take these messages out of every batch (`smppd cancel`); how many were here."""
        removed = 0
        for batch in [*self._ready, *(b for bs in self._open.values() for b in bs)]:
            kept = [j for j in batch.jobs if j.message.id not in row_ids]
            removed += len(batch.jobs) - len(kept)
            batch.jobs[:] = kept
            batch.phones = {j.message.phone for j in kept}
        self._ready = deque(b for b in self._ready if b.jobs)
        for key in list(self._open):
            self._open[key] = [b for b in self._open[key] if b.jobs]
            if not self._open[key]:
                del self._open[key]
        return removed

    def jobs(self) -> list[Job]:
        """Every job waiting here, ready or still filling."""
        return [j for b in self._ready for j in b.jobs] + [j for bs in self._open.values() for b in bs for j in b.jobs]

    def __len__(self) -> int:
        return sum(len(b.jobs) for b in self._ready) + sum(
            len(b.jobs) for bs in self._open.values() for b in bs
        )
