"""The ``contacts.*`` RPC methods: jobs over the portals' REST clients, started, watched, paged.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

import structlog

from ...rpc import RpcError
from ..rest import RestError
from .hlr import HLR_FIELDS, HlrFor, HlrResult, HlrSource, hlr_fields
from .scan import ENTITIES, BulkClient, ContactsJob, ScanReport

log = structlog.get_logger(__name__)


class ProgressTable(Protocol):
    """The store's ``contacts_progress`` table (migration 8)."""

    async def contacts_progress(self, member_id: str) -> dict[str, int]: ...

    async def contacts_progress_save(self, member_id: str, entity: str, after_id: int) -> None: ...

    async def contacts_progress_clear(self, member_id: str) -> None: ...

    async def hlr_cached(self, phones: list[str], since: float) -> dict[str, tuple[bool, str, str]]: ...

    async def hlr_save(self, results: Iterable[tuple[str, bool, str, str]]) -> None: ...


HLR_TTL = 30 * 86400.0


class RpcRefused(Exception):
    """A request the caller must fix: (field, message); ``methods()`` answers it as ``bad_request``."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass
class _Running:
    member_id: str
    action: str
    job: ContactsJob
    task: asyncio.Task[ScanReport]
    resumed: dict[str, int]
    quote: dict[str, Any] | None = None  # hlr: what it would check and cost, before the go-ahead
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class ContactsJobs:
    """The ``contacts.*`` RPC methods: start a job in the background, watch it, page its lists.

    Why jobs and not one long call: a scan of 50,000 contacts takes minutes at the portal's
    limit, longer than any socket timeout, and the CLI wants a progress bar meanwhile.
    One job per portal at a time: two would only split the same budget.
    """

    def __init__(self, clients: Callable[[], Mapping[str, BulkClient]], store: ProgressTable,
                 hlr_for: HlrFor | None = None, clock: Callable[[], float] = time.time) -> None:
        self._clients = clients
        self._store = store
        self._hlr_for = hlr_for
        self._clock = clock
        self._jobs: dict[str, _Running] = {}
        self._ids = itertools.count(1)

    def methods(self) -> dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]]:
        """The RPC methods, a refusal (`RpcRefused`) answered as ``bad_request`` naming its field."""

        def answer(method: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
                   ) -> Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]:
            async def call(params: Mapping[str, Any]) -> dict[str, Any]:
                try:
                    return await method(params)
                except RpcRefused as e:
                    raise RpcError("bad_request", str(e), field=e.field) from None
            return call

        return {"contacts.start": answer(self.start), "contacts.job": answer(self.status),
                "contacts.rows": answer(self.rows), "contacts.confirm": answer(self.confirm),
                "contacts.cancel": answer(self.cancel)}

    async def start(self, params: Mapping[str, Any]) -> dict[str, Any]:
        action = params.get("action")
        if action not in ("scan", "normalize", "hlr"):
            raise RpcRefused("action", "action: must be scan, normalize or hlr")
        apply = params.get("apply") is True
        clients = self._clients()
        member_id = params.get("portal")
        if member_id is None:
            if len(clients) != 1:
                raise RpcRefused("portal", f"portal: {len(clients)} portals installed, name one (member_id)")
            member_id = next(iter(clients))
        if not isinstance(member_id, str) or member_id not in clients:
            raise RpcRefused("portal", f"portal: no installed portal {member_id!r}")
        entities = params.get("entities", list(ENTITIES))
        if not isinstance(entities, list) or not entities or any(e not in ENTITIES for e in entities):
            raise RpcRefused("entities", f"entities: a list of {', '.join(ENTITIES)}")
        where = params.get("filter", {})
        if not isinstance(where, dict) or not all(isinstance(k, str) and isinstance(v, str) and k
                                                  and k.lstrip("<>=!@%").upper() != "ID" for k, v in where.items()):
            raise RpcRefused("filter", "filter: a map of field to value (not ID: the job pages by ID)")
        if any(r.member_id == member_id and not r.task.done() for r in self._jobs.values()):
            raise RpcRefused("portal", "portal: a contacts job is already running there")
        hlr = None
        if action == "hlr":
            code = params.get("code")
            made = self._hlr_for(code) if self._hlr_for is not None and isinstance(code, str) else "no HLR here"
            if isinstance(made, str):
                raise RpcRefused("code", f"code: {made}")
            hlr = made
            ttl = params.get("cache_ttl", HLR_TTL)
            if not isinstance(ttl, (int, float)) or ttl < 0:
                raise RpcRefused("cache_ttl", "cache_ttl: seconds, 0 or more")
        resume = await self._store.contacts_progress(member_id) if apply else {}

        async def save(entity: str, after_id: int) -> None:
            await self._store.contacts_progress_save(member_id, entity, after_id)

        job = ContactsJob(clients[member_id], normalize=action == "normalize", apply=apply, entities=entities,
                          resume=resume, save=save, where=where)
        job_id = str(next(self._ids))
        if hlr is not None:
            running = _Running(member_id, action, job, None, resume)  # type: ignore[arg-type]
            running.task = asyncio.create_task(self._run_hlr(running, *hlr, float(ttl)), name=f"contacts-{job_id}")
        else:
            running = _Running(member_id, action, job,
                               asyncio.create_task(self._run(member_id, job, apply), name=f"contacts-{job_id}"),
                               resume)
        self._jobs[job_id] = running
        log.info("contacts.job_started", job=job_id, portal=member_id, action=action, apply=apply,
                 resumed=bool(resume))
        return {"job": job_id, "portal": member_id, "resumed": resume}

    async def _run(self, member_id: str, job: ContactsJob, apply: bool) -> ScanReport:
        report = await job.run()
        if apply:
            await self._store.contacts_progress_clear(member_id)  # done: the next run starts over
        log.info("contacts.job_done", portal=member_id, **{k: v for k, v in report.summary().items()
                                                          if isinstance(v, int)})
        return report

    async def _run_hlr(self, running: _Running, hlr: HlrSource, close: Callable[[], Awaitable[None]],
                       ttl: float) -> ScanReport:
        """Scan, price what the cache does not know, wait for the go-ahead, check, write back."""
        job = running.job
        try:
            report = await job.run()
            numbers = sorted(report.owners)
            cached = await self._store.hlr_cached(numbers, self._clock() - ttl)
            todo = [n for n in numbers if n not in cached]
            job.progress.phase = "pricing"
            running.quote = {"numbers": len(numbers), "cached": len(cached), "to_check": len(todo),
                             "price": await hlr.price(todo) if todo else 0.0}
            job.progress.phase = "confirm"
            await running.confirmed.wait()
            job.progress.phase = "hlr"
            job.progress.total, job.progress.done = len(todo), 0
            job.progress.started = time.monotonic()

            def done(n: int) -> None:
                job.progress.done += n

            fresh = await hlr.check(todo, done)
            await self._store.hlr_save((n, r.reachable, r.operator, r.region) for n, r in fresh.items())
        finally:
            await close()
        job.progress.phase = "writing"
        owners: dict[tuple[str, int], list[HlrResult]] = {}
        for number, result in fresh.items():
            for owner in report.owners[number]:
                owners.setdefault(owner, []).append(result)
        if owners:
            await job.ensure_fields(sorted({e for e, _ in owners}), HLR_FIELDS)
            await job.write({owner: hlr_fields(results) for owner, results in owners.items()})
        report.hlr = {"checked": len(fresh), "reachable": sum(r.reachable for r in fresh.values()),
                      "unanswered": len(todo) - len(fresh), "cached": len(cached),
                      "price": running.quote["price"] if running.quote else 0.0}
        job.progress.phase = "done"
        return report

    async def confirm(self, params: Mapping[str, Any]) -> dict[str, Any]:
        running = self._job(params)
        if running.quote is None:
            raise RpcRefused("job", "job: not waiting for a confirmation")
        running.confirmed.set()
        return {"confirmed": True}

    async def cancel(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Stop a job (an hlr not confirmed, a scan no longer wanted); a normalize keeps its progress."""
        running = self._job(params)
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)
        return {"cancelled": True}

    def _job(self, params: Mapping[str, Any]) -> _Running:
        running = self._jobs.get(str(params.get("job")))
        if running is None:
            raise RpcRefused("job", f"job: no job {params.get('job')!r}")
        return running

    async def status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        running = self._job(params)
        out: dict[str, Any] = {"action": running.action, "portal": running.member_id, "resumed": running.resumed,
                               "progress": running.job.progress.as_dict(), "waits": running.job.waits,
                               "apply": running.job.apply}
        if not running.task.done():
            out["state"] = "confirm" if running.quote is not None and not running.confirmed.is_set() else "running"
            if running.quote is not None:
                out["quote"] = running.quote
        elif running.task.cancelled():
            out["state"] = "failed"
            out["error"] = "cancelled"
        elif running.task.exception() is not None:
            exc = running.task.exception()
            out["state"] = "failed"
            out["error"] = (f"{exc.code}: {exc.description}" if isinstance(exc, RestError)
                            else f"{type(exc).__name__}: {exc}")
            if isinstance(exc, RestError) and exc.code == "insufficient_scope":
                out["error"] += " (give the local app the crm scope besides messageservice, then reinstall it)"
            elif isinstance(exc, RestError) and exc.code == "ACCESS_DENIED":
                out["error"] += " (user fields need an administrator's token: install the app as an admin)"
        else:
            out["state"] = "done"
        out["summary"] = running.job.report.summary()
        return out

    async def rows(self, params: Mapping[str, Any]) -> dict[str, Any]:
        running = self._job(params)
        kind = params.get("kind")
        if kind not in ("invalid", "changes", "shared", "failed", "numbers"):
            raise RpcRefused("kind", "kind: invalid, changes, shared, failed or numbers")
        offset, limit = params.get("offset", 0), params.get("limit", 1000)
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0 or not 0 < limit <= 5000:
            raise RpcRefused("limit", "offset/limit: integers, limit 1..5000")
        everything = running.job.report.rows(kind)
        return {"rows": everything[offset:offset + limit], "total": len(everything)}

    async def close(self) -> None:
        for running in self._jobs.values():
            running.task.cancel()
        await asyncio.gather(*(r.task for r in self._jobs.values()), return_exceptions=True)
