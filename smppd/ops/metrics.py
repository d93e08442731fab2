"""Every Prometheus metric of smppd, defined here and nowhere else.

Three kinds of source, so the hot path pays next to nothing:

* **counted where it happens** (one-line calls from intake, the route, the
  pusher, the shim): things only the moment knows, such as a submit_sm's
  round trip or a REST error code;
* **read at scrape time** from live objects (``DaemonCollector``): bind state,
  queue depth, window occupancy and the counters the route already keeps in
  ``stats``;
* **read from the store** in the background by ``smppd.ops.journal`` (its own
  read-only connection, never the writer): messages by route and status, the
  Bitrix24 outbox, receipt latency (``StoreCollector``).

Labels are low-cardinality on purpose: route names, portal member_ids, status
words, HTTP codes.  Never a phone number or a message id.

Each process serves ``/metrics`` on its own loopback port (``[daemon] metrics``
and ``[shim] metrics`` in config.toml); nginx never exposes it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import Config
from ..model import FINAL, Status
from ..store.engine import is_postgresql

T = TypeVar("T")


# --- what a scrape reads of the running daemon ---------------------------------------
# The daemon passes itself in (it satisfies LiveState structurally): metrics is a part
# that the route, the pusher and the store count into, so it may import none of them,
# nor the daemon that wires them.


class RouteGauges(Protocol):
    """A route as the scrape sees it (a subset of ``routes.base.Route``)."""

    @property
    def kind(self) -> str: ...
    @property
    def up(self) -> bool: ...
    @property
    def binds_made(self) -> int | None: ...
    @property
    def window_size(self) -> int | None: ...
    @property
    def depth(self) -> int: ...
    @property
    def inflight(self) -> int: ...
    @property
    def stats(self) -> Mapping[str, int]: ...


class PusherCounts(Protocol):
    """A Bitrix24 status pusher's counters (``bitrix24.pusher.StatusPusher``)."""

    @property
    def pushed(self) -> int: ...
    @property
    def dropped(self) -> int: ...


class StoreGauges(Protocol):
    """The store's disk and back-pressure state (``store.Store``)."""

    @property
    def path(self) -> str: ...
    @property
    def unavailable(self) -> str | None: ...
    @property
    def held_receipts(self) -> int: ...
    @property
    def refused(self) -> Mapping[str, int]: ...


class ClusterGauges(Protocol):
    """A node of several on one PostgreSQL (``smppd.cluster.Ownership``)."""

    node: str

    def leases(self) -> Mapping[str, bool]: ...  # every lease this node contends for: held here?
    def lease_changes(self) -> Mapping[tuple[str, str], int]: ...  # (lease, gained|fenced|lost|released)
    @property
    def connection_losses(self) -> int: ...


class LiveState(Protocol):
    """The daemon as ``DaemonCollector`` and ``smppd.ops.runner`` see it."""

    node: str
    cluster: ClusterGauges | None  # None: SQLite, one node

    @property
    def config(self) -> Config: ...
    @property
    def routes(self) -> Mapping[str, RouteGauges]: ...
    @property
    def pushers(self) -> Mapping[str, PusherCounts]: ...
    @property
    def store(self) -> StoreGauges: ...

# Seconds.  An SMSC answers submit_sm in milliseconds; a resp after seconds
# means it is overloaded.  Receipts take seconds to days.
SUBMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECEIPT_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600, 72 * 3600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- counted where it happens ---------------------------------------------------------

MESSAGES_RECEIVED = Counter(
    "smppd_messages_received", "Messages stored by intake (duplicates not counted), by route and first status.",
    ["route", "status"],
)
SEGMENTS_RECEIVED = Counter("smppd_segments_received", "SMS segments of the messages stored by intake.", ["route"])
SUBMIT_LATENCY = Histogram(
    "smppd_submit_latency_seconds", "submit_sm to its submit_sm_resp (accepted or rejected).", ["route"],
    buckets=SUBMIT_BUCKETS,
)
THROTTLE_EVENTS = Counter(
    "smppd_throttle_events",
    "Times a route held a segment back: reason=throughput (our cap) or the SMSC's temporary error name.",
    ["route", "reason"],
)
RECONNECTS = Counter("smppd_smpp_reconnects", "Connection attempts after a lost or failed bind.", ["route"])
# issue 14.6: a receipt whose id matched no part we sent, as-is or in another base, even after
# waiting for its submit_sm_resp; a steady count means a wrong receipt_id_base/resp_id_base.
RECEIPTS_UNMATCHED = Counter(
    "smppd_receipts_unmatched", "Receipts that never matched a part we sent (given up after waiting).", ["route"],
)
PUSH_LATENCY = Histogram(
    "smppd_bitrix24_push_latency_seconds", "One batch of status updates to Bitrix24, request to answer.",
    ["portal"], buckets=HTTP_BUCKETS,
)
REST_ERRORS = Counter(
    "smppd_bitrix24_rest_errors", "Bitrix24 REST errors: of a whole batch call or of one command in it.",
    ["portal", "code"],
)
SHIM_REQUESTS = Counter(
    "smppd_shim_requests", "HANDLER posts answered by the shim, by HTTP status and outcome.",
    ["http_status", "outcome"],
)
POSTS_WITHOUT_AUTH = Counter(
    "smppd_posts_without_auth", "HANDLER posts with no auth[] block (no author), by portal and whether "
    "[shim] posts_without_auth refused them.", ["portal", "refused"],
)
SHIM_LATENCY = Histogram(
    "smppd_shim_request_seconds", "HANDLER post to answer, including the daemon's commit.", buckets=HTTP_BUCKETS,
)

# --- issue 14 item 12: numbers sent on their mobile shape alone ---------------------------

NUMBERS_OUTSIDE_METADATA = Counter(
    "smppd_numbers_outside_metadata",
    "Numbers phonenumbers refused that were sent anyway because they have the country's mobile shape "
    "(a rising count: new ranges the library lacks, or a shape rule to revisit).",
    ["route", "reason"],
)

# --- the shim's spool (shim/spool.py): posts kept on disk while the daemon does not answer --

SHIM_SPOOLED = Counter(
    "smppd_shim_spooled", "HANDLER posts the shim kept in its spool because the daemon did not commit in time.",
)
SHIM_REPLAYED = Counter("smppd_shim_spool_replayed", "Spooled posts forwarded to the daemon and answered.")
SHIM_SPOOL_REFUSED = Counter(
    "smppd_shim_spool_refused", "Posts the spool could not keep (answered 503): reason=full or disk.", ["reason"],
)
HEAP_FROZEN = Gauge("smppd_heap_frozen_objects", "Objects moved out of the cyclic collector's reach when the"
                    " process became ready or reloaded (smppd/ops/heap.py); 0 means it never settled.")
SHIM_SPOOL_BYTES = Gauge("smppd_shim_spool_bytes", "Bytes of spooled posts on the shim's disk.")
SHIM_SPOOL_LIMIT = Gauge("smppd_shim_spool_limit_bytes", "The spool's size cap (shim.spool_max_bytes).")
SHIM_SPOOL_OLDEST = Gauge(
    "smppd_shim_spool_oldest_seconds", "Age of the oldest post waiting in the spool; 0 when it is empty.",
)


def heap_settled(frozen: int) -> None:
    HEAP_FROZEN.set(frozen)


def shim_spool_state(spool_bytes: int, limit: int, oldest_age: Any) -> None:
    """A spool opened: its size, cap, and where its oldest post's age is read at scrape time."""
    SHIM_SPOOL_BYTES.set(spool_bytes)
    SHIM_SPOOL_LIMIT.set(limit)
    SHIM_SPOOL_OLDEST.set_function(oldest_age)


def shim_spooled(posts: int, spool_bytes: int) -> None:
    if posts:
        SHIM_SPOOLED.inc(posts)
    SHIM_SPOOL_BYTES.set(spool_bytes)


def shim_replayed(posts: int, spool_bytes: int) -> None:
    SHIM_REPLAYED.inc(posts)
    SHIM_SPOOL_BYTES.set(spool_bytes)


def shim_spool_refused(reason: str) -> None:
    _child(SHIM_SPOOL_REFUSED, reason).inc()


# --- observed by smppd.ops.journal as it tails the store's status events ----------------------

RECEIPT_LATENCY = Histogram(
    "smppd_receipt_latency_seconds", "Segment accepted by the operator to its final receipt.", ["route", "status"],
    buckets=RECEIPT_BUCKETS,
)
STATUS_EVENTS = Counter(
    "smppd_segment_status_changes", "Applied status changes of segments, by route and new status.",
    ["route", "status"],
)

# --- submit round trips ------------------------------------------------------------------

_MAX_OPEN_SUBMITS = 100_000  # a bound, in case resps never come and the refs are never answered
_submits: dict[tuple[str, Any], float] = {}


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


# --- app events (bitrix24/install.py) ----------------------------------------------------

APP_EVENTS = Counter("smppd_app_events", "App events (install/update/uninstall) settled, by outcome:"
                     " applied, refused (not proven), dropped (unknown domain over the bound).", ["outcome"])
APP_EVENTS_UNPROVEN = Gauge("smppd_app_events_unproven", "App events of configured portals stored and not"
                            " proven yet (the portal or the OAuth server has not answered).")
APP_EVENTS_UNPROVEN_OLDEST = Gauge("smppd_app_events_unproven_oldest_seconds",
                                   "Age of the oldest app event of a configured portal not proven yet (0: none).")
APP_EVENTS_WAITING_CONFIG = Gauge("smppd_app_events_waiting_config",
                                  "Install events for domains without an [[app]] yet (bounded by [app_events]).")


def app_events_done(outcome: str, n: int = 1) -> None:
    APP_EVENTS.labels(outcome).inc(n)


def watch_app_events(figures: Callable[[], tuple[int, float, int]]) -> None:
    """Read the event queue at scrape time: its oldest event ages without anything happening."""
    APP_EVENTS_UNPROVEN.set_function(lambda: figures()[0])
    APP_EVENTS_UNPROVEN_OLDEST.set_function(lambda: figures()[1])
    APP_EVENTS_WAITING_CONFIG.set_function(lambda: figures()[2])


def _child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per label set.

    ``labels()`` validates and takes a lock on every call, and the hot paths call
    it per message (a post, a resp). Only for labels with few values (routes,
    statuses, fixed outcomes), so the cache stays small.
    """
    child = _children.get((metric, values))
    if child is None:
        child = _children[(metric, values)] = metric.labels(*values)
    return child


def submit_sent(route: str, ref: Any) -> None:
    """A submit_sm went out; ``submit_answered`` with the same ref observes its round trip."""
    if len(_submits) >= _MAX_OPEN_SUBMITS:
        _submits.pop(next(iter(_submits)))
    _submits[(route, ref)] = time.monotonic()


def submit_answered(route: str, ref: Any) -> None:
    start = _submits.pop((route, ref), None)
    if start is not None:
        _child(SUBMIT_LATENCY, route).observe(time.monotonic() - start)


def message_received(route: str, status: str, segments: int, *, duplicate: bool = False) -> None:
    """A post stored by intake; a duplicate post is not a new message."""
    if duplicate:
        return
    _child(MESSAGES_RECEIVED, route, status).inc()
    _child(SEGMENTS_RECEIVED, route).inc(segments)


def shim_answered(http_status: int, outcome: str, seconds: float) -> None:
    _child(SHIM_REQUESTS, str(http_status), outcome).inc()
    SHIM_LATENCY.observe(seconds)


def post_without_auth(portal: str, refused: bool) -> None:
    _child(POSTS_WITHOUT_AUTH, portal, "true" if refused else "false").inc()


def rest_error(portal: str, error: Any) -> None:
    """A Bitrix24 error (anything with a ``code``: RestError, a batch command's error); None is no error."""
    if error is not None:
        REST_ERRORS.labels(portal, str(error.code)).inc()


async def timed_push(portal: str, call: Awaitable[T]) -> T:
    """Await a Bitrix24 batch call, observing how long it took (failures too)."""
    start = time.monotonic()
    try:
        return await call
    finally:
        PUSH_LATENCY.labels(portal).observe(time.monotonic() - start)


# --- read at scrape time ----------------------------------------------------------------

ROUTE_COUNTERS = {  # SmppRoute.stats key -> (metric, help)
    "submitted": ("smppd_segments_submitted", "submit_sm sent (a resent segment counts again)."),
    "accepted": ("smppd_segments_accepted", "Segments the operator accepted (submit_sm_resp OK)."),
    "rejected": ("smppd_segments_rejected", "Segments the operator refused for good."),
    "requeued": ("smppd_segments_requeued", "Segments put back in the queue: temporary error or lost bind."),
    "receipts": ("smppd_receipts_received", "Delivery receipts received (deliver_sm)."),
    "receipts_unmatched": ("smppd_receipts_before_resp", "Receipts that arrived before their submit_sm_resp."),
    "mo": ("smppd_mo_received", "Mobile-originated messages received."),
    "no_receipt": ("smppd_parts_no_receipt", "Parts ended undelivered: no receipt within the route's validity."),
    "queries": ("smppd_query_sm_sent", "query_sm sent for parts with no receipt (routes with query_sm = true)."),
}


class DaemonCollector(Collector):
    """The live state of one daemon, read when Prometheus scrapes.

    Runs in the event loop (the metrics server is an aiohttp app on the same
    loop), so it reads the routes without locks.
    """

    def __init__(self, daemon: LiveState) -> None:
        self.daemon = daemon

    def describe(self) -> Iterable[Any]:
        return []  # no up-front description: the routes are known only at scrape time

    def collect(self) -> Iterable[Any]:
        bind = GaugeMetricFamily("smppd_bind_up", "1 when the route's SMPP bind is up.", labels=["route"])
        binds = CounterMetricFamily("smppd_smpp_binds", "Successful binds since start.", labels=["route"])
        depth = GaugeMetricFamily("smppd_queue_depth", "Segments waiting in the route's queue.", labels=["route"])
        inflight = GaugeMetricFamily(
            "smppd_window_inflight", "submit_sm awaiting their resp (window occupancy).", labels=["route"],
        )
        window = GaugeMetricFamily("smppd_window_size", "The route's configured window.", labels=["route"])
        counters = {k: CounterMetricFamily(n, h, labels=["route"]) for k, (n, h) in ROUTE_COUNTERS.items()}
        up = GaugeMetricFamily(
            "smppd_route_up", "1 when the route can send: its SMPP bind is up, or its HTTP provider answered "
            "the last request.", labels=["route", "kind"],
        )
        cluster = self.daemon.cluster
        held = cluster.leases() if cluster is not None else {}
        for name, route in self.daemon.routes.items():
            if cluster is not None and not held.get(f"route:{name}"):
                continue  # another node runs it: its gauges are that node's (no false "down" here)
            up.add_metric([name, route.kind], 1.0 if route.up else 0.0)
            if route.binds_made is not None:  # SMPP: binds and a window; HTTP routes have neither
                bind.add_metric([name], 1.0 if route.up else 0.0)
                binds.add_metric([name], route.binds_made)
            if route.window_size is not None:
                window.add_metric([name], route.window_size)
            depth.add_metric([name], route.depth)
            inflight.add_metric([name], route.inflight)
            for key, family in counters.items():
                family.add_metric([name], route.stats.get(key, 0))
        pushed = CounterMetricFamily(
            "smppd_bitrix24_updates_pushed", "Status updates Bitrix24 accepted.", labels=["portal"],
        )
        dropped = CounterMetricFamily(
            "smppd_bitrix24_updates_dropped", "Status updates for messages Bitrix24 no longer has.", labels=["portal"],
        )
        for member_id, pusher in self.daemon.pushers.items():
            pushed.add_metric([member_id], pusher.pushed)
            dropped.add_metric([member_id], pusher.dropped)
        yield from (bind, binds, up, depth, inflight, window, *counters.values(), pushed, dropped)
        yield from storage_families(self.daemon.store, self.daemon.config.daemon.min_free_mb)
        yield from cluster_families(self.daemon.node, cluster)


def cluster_families(node: str, cluster: ClusterGauges | None) -> Iterable[Any]:
    """Which node this is, and (several nodes) which leases it holds and how often they moved.

    ``smppd_lease_held`` is exported by every node for every lease it contends for, so
    ``max by (lease)`` over the nodes is 0 exactly when nobody owns the route or portal.
    """
    info = GaugeMetricFamily("smppd_node_info", "This daemon's [daemon] node; 1.", labels=["node", "clustered"])
    info.add_metric([node, "1" if cluster is not None else "0"], 1.0)
    yield info
    if cluster is None:
        return
    held = GaugeMetricFamily("smppd_lease_held", "1 while this node holds the lease (route:, portal:, job:).",
                             labels=["lease", "kind", "node"])
    for lease, is_held in cluster.leases().items():
        held.add_metric([lease, lease.partition(":")[0], node], 1.0 if is_held else 0.0)
    changes = CounterMetricFamily("smppd_lease_changes", "Leases gained here, and lost: fenced (own deadline), "
                                  "lost (taken), released (stop).", labels=["lease", "change", "node"])
    for (lease, change), n in cluster.lease_changes().items():
        changes.add_metric([lease, change, node], float(n))
    losses = CounterMetricFamily("smppd_lease_connection_losses", "Lease connections to PostgreSQL lost.",
                                 labels=["node"])
    losses.add_metric([node], float(cluster.connection_losses))
    yield from (held, changes, losses)


def storage_families(store: StoreGauges, min_free_mb: int) -> Iterable[Any]:
    """The disk under the database (issue 19 item 3), read at scrape time: one statvfs."""
    available = GaugeMetricFamily(
        "smppd_store_available", "1 while the store can write; 0 on a full (or failing) disk: posts get 503.")
    available.add_metric([], 0.0 if store.unavailable is not None else 1.0)
    free = GaugeMetricFamily("smppd_store_free_bytes", "Bytes free for the daemon on the database's filesystem.")
    try:
        if not is_postgresql(store.path):  # PostgreSQL's disk is the server's to watch
            st = os.statvfs(os.path.dirname(os.path.abspath(store.path)) or ".")
            free.add_metric([], float(st.f_bavail * st.f_frsize))
    except OSError:
        pass  # no sample: the alert's absent() side says so
    threshold = GaugeMetricFamily(
        "smppd_store_free_threshold_bytes", "[daemon] min_free_mb: below it SmppdDiskSpaceLow fires.")
    threshold.add_metric([], float(min_free_mb) * 1024 * 1024)
    held = GaugeMetricFamily("smppd_store_held_receipts", "Receipts waiting in memory for the store to write.")
    held.add_metric([], float(store.held_receipts if store.unavailable is not None else 0))
    refused = CounterMetricFamily(
        "smppd_store_refused", "Posts and receipts refused because the store could not write.", labels=["kind"])
    for kind, n in store.refused.items():
        refused.add_metric([kind], float(n))
    yield from (available, free, threshold, held, refused)


@dataclass(frozen=True)
class StoreSnapshot:
    """Figures read from the store in one read transaction (by ``smppd.ops.journal``)."""

    messages: Mapping[tuple[str, str], int]  # (route, status) -> messages
    outbox: Mapping[str, tuple[int, float]]  # portal -> (updates owed, age of the oldest in seconds)
    receipts_pending: int


class StoreCollector(Collector):
    """The latest ``StoreSnapshot``, as metrics.

    Messages in a final status are exposed as a counter: a final status never
    changes and rows are never deleted, so the figure only grows, survives
    restarts (it is read from the store), and rate()/increase() work on it.
    """

    def __init__(self) -> None:
        self.snapshot: StoreSnapshot | None = None

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        snap = self.snapshot
        if snap is None:
            return
        final = CounterMetricFamily(
            "smppd_messages_final", "Messages that reached a final status, by route and status.",
            labels=["route", "status"],
        )
        open_ = GaugeMetricFamily(
            "smppd_messages_open", "Messages not final yet (queued, submitted, accepted).", labels=["route", "status"],
        )
        for (route, status), n in sorted(snap.messages.items()):
            (final if Status(status) in FINAL else open_).add_metric([route, status], n)
        depth = GaugeMetricFamily("smppd_bitrix24_outbox_depth", "Status updates owed to Bitrix24.",
                                  labels=["portal"])
        oldest = GaugeMetricFamily(
            "smppd_bitrix24_outbox_oldest_seconds", "Age of the oldest update owed to Bitrix24 (0 when none).",
            labels=["portal"],
        )
        for portal, (n, age) in sorted(snap.outbox.items()):
            depth.add_metric([portal], n)
            oldest.add_metric([portal], age)
        pending = GaugeMetricFamily(
            "smppd_receipts_pending", "Receipts waiting for the submit_sm_resp that names their message.",
        )
        pending.add_metric([], snap.receipts_pending)
        yield from (final, open_, depth, oldest, pending)
