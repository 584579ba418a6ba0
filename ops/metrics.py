"""Prometheus metrics: the families an operator alerts on (docs/OPERATIONS.md).

Counted where calls happen (ops.observe) and summed across worker processes: with
PROMETHEUS_MULTIPROC_DIR set (gateway_project.serve sets it before forking its workers),
prometheus_client keeps each process's values in files there and a scrape adds them up.
What lives in the shared stores (reservations in PostgreSQL, the settlement spool in Redis) is read
when scraped, so it is right across processes and hosts and costs the hot path nothing.

The relays do not touch prometheus_client per call: `add` and `observe` accumulate in this
process (a dict update under a lock) and `flush` hands the sums over once per FLUSH_S from the
event loop (and before a scrape, and at exit). Under multiprocess mode every prometheus_client
update is a locked write to a memory-mapped file: per call, that was most of the cost of metrics
on the hot path (docs/PERFORMANCE.md). Counts may lag by FLUSH_S; nothing is dropped.

Label values are bounded sets only: endpoint, outcome, status code, error code, model slug and
provider id (both from the admin's catalog). Never a member, a key prefix or an allocation id.
"""

import asyncio
import atexit
import bisect
import logging
import os
import threading
from collections.abc import Iterable, Iterator

from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import REGISTRY, Collector

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "gateway_requests", "Proxied /v1 calls and realtime sessions, by outcome", ["endpoint", "outcome", "status"]
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Time the gateway added to a call (wall time minus the upstream's), by endpoint",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
UPSTREAM = Histogram(
    "gateway_upstream_seconds",
    "Time from sending a call upstream to its last byte, by endpoint",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
REFUSALS = Counter("gateway_admission_refusals", "Calls refused before going upstream, by error code", ["code"])
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors", "Calls the upstream failed (5xx, 4xx, timeout, connection)", ["provider", "endpoint"]
)
FAILED_ATTEMPTS = Counter(
    "gateway_upstream_failed_attempts",
    "Upstream attempts that failed and moved the call to another deployment (or ended it), by deployment",
    ["deployment", "reason"],
)
SPEND = Counter("gateway_spend_usd", "USD billed to allocations (priced calls), by model", ["model"])
TOKENS = Counter("gateway_tokens", "Tokens metered, by model and direction (input|output)", ["model", "direction"])
IN_FLIGHT = Gauge("gateway_calls_in_flight", "Admitted /v1 calls not yet settled", multiprocess_mode="livesum")
SESSIONS_OPEN = Gauge("gateway_realtime_sessions_open", "Realtime sessions relaying", multiprocess_mode="livesum")


FLUSH_S = 1.0
_lock = threading.Lock()
_added: dict[tuple, float] = {}  # (counter or gauge, label values) -> amount
_observed: dict[tuple, list] = {}  # (histogram, label values) -> [sum, count in bucket 0, 1, …]
_flush_due = False


def record(
    added: Iterable[tuple[MetricWrapperBase, tuple, float]] = (),
    observed: Iterable[tuple[Histogram, tuple, float]] = (),
) -> None:
    """Batched updates, under one lock: `added` holds (counter or gauge, label values, amount) (a
    gauge may take a negative amount), `observed` (histogram, label values, value)."""
    with _lock:
        for metric, labels, amount in added:
            key = (metric, labels)
            _added[key] = _added.get(key, 0.0) + amount
        for histogram, labels, value in observed:
            key = (histogram, labels)
            entry = _observed.get(key)
            if entry is None:
                entry = _observed[key] = [0.0] + [0] * len(histogram._upper_bounds)
            entry[0] += value
            entry[1 + bisect.bisect_left(histogram._upper_bounds, value)] += 1  # the first bound >= value
    _schedule()


def add(metric: Counter | Gauge, labels: tuple = (), amount: float = 1.0) -> None:
    """metric.labels(*labels).inc(amount), batched."""
    record(added=((metric, labels, amount),))


def observe(histogram: Histogram, labels: tuple, value: float) -> None:
    """histogram.labels(*labels).observe(value), batched."""
    record(observed=((histogram, labels, value),))


def _schedule() -> None:
    global _flush_due
    if _flush_due:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop (a thread, a task worker): no batching
        flush()
        return
    _flush_due = True
    loop.call_later(FLUSH_S, flush)


def flush() -> None:
    global _flush_due
    with _lock:
        added, observed = dict(_added), dict(_observed)
        _added.clear()
        _observed.clear()
        _flush_due = False
    for (metric, labels), amount in added.items():
        (metric.labels(*labels) if labels else metric).inc(amount)
    for (histogram, labels), (total, *counts) in observed.items():
        # What Histogram.observe does, n observations at a time: its sum and its (non-cumulative)
        # bucket values, the layout prometheus_client keeps in both modes.
        child = histogram.labels(*labels)
        child._sum.inc(total)
        for bucket, count in zip(child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


atexit.register(flush)


class StoreCollector(Collector):
    """Gauges read from PostgreSQL, the spool and Redis at scrape time (sync: the caller runs it in a
    thread)."""

    def collect(self) -> Iterator[Metric]:
        from quota import ledger
        from quota.models import Reservation

        now = timezone.now()
        try:
            open_count = Reservation.objects.count()
            expired = Reservation.objects.filter(expires_at__lt=now).count()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down (/readyz says so)
            logger.warning("metrics: reservations unreadable", exc_info=True)
        else:
            yield GaugeMetricFamily("gateway_reservations_open", "Reservations held by calls in flight", open_count)
            yield GaugeMetricFamily(
                "gateway_reservations_expired",
                "Reservations past their expiry and not yet swept (stuck: the sweeper is not running)",
                expired,
            )
        try:
            depth = ledger.spool_depth()
        except Exception:  # noqa: BLE001
            logger.warning("metrics: spool unreadable", exc_info=True)
        else:
            yield GaugeMetricFamily("gateway_settlements_spooled", "Settlements waiting in the spool for replay", depth)
        yield from _redis_and_heartbeats()


def _redis_and_heartbeats() -> Iterator[Metric]:
    """gateway_redis_up, and each Celery process's heartbeat age (+Inf: never seen) while Redis answers."""
    from django.conf import settings

    from . import heartbeat

    if not settings.REDIS_URL:
        return
    try:
        ages = heartbeat.ages()
    except Exception:  # noqa: BLE001 - Redis down is what the gauge reports
        logger.warning("metrics: redis unreachable", exc_info=True)
        ages = None
    yield GaugeMetricFamily("gateway_redis_up", "1 while this instance reaches Redis, else 0", int(ages is not None))
    if ages:
        family = GaugeMetricFamily(
            "gateway_celery_heartbeat_age_seconds",
            "Seconds since the Celery worker's or beat's last heartbeat (+Inf: never seen)",
            labels=["process"],
        )
        for process, age in ages.items():
            family.add_metric([process], float("inf") if age is None else age)
        yield family


_stores = CollectorRegistry(auto_describe=False)
_stores.register(StoreCollector())


def scrape() -> bytes:
    """The whole exposition (sync: reads files and the database)."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    try:
        return generate_latest(registry) + generate_latest(_stores)
    finally:
        from django.db import connection

        connection.close()
