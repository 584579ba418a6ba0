"""Prometheus metrics: the families an operator alerts on (docs/OPERATIONS.md).

Counted where calls happen (ops.observe) and summed across worker processes: with
PROMETHEUS_MULTIPROC_DIR set (gateway_project.serve sets it before forking its workers),
prometheus_client keeps each process's values in files there and a scrape adds them up.
What lives in the shared stores (reservations in PostgreSQL, the settlement spool in Redis) is read
when scraped, so it is right across processes and hosts and costs the hot path nothing.

Label values are bounded sets only: endpoint, outcome, status code, error code, model slug and
provider id (both from the admin's catalog). Never a member, a key prefix or an allocation id.
"""

import logging
import os

from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
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
SPEND = Counter("gateway_spend_usd", "USD billed to allocations (priced calls), by model", ["model"])
TOKENS = Counter("gateway_tokens", "Tokens metered, by model and direction (input|output)", ["model", "direction"])
IN_FLIGHT = Gauge("gateway_calls_in_flight", "Admitted /v1 calls not yet settled", multiprocess_mode="livesum")
SESSIONS_OPEN = Gauge("gateway_realtime_sessions_open", "Realtime sessions relaying", multiprocess_mode="livesum")


class StoreCollector(Collector):
    """Gauges read from PostgreSQL and the spool at scrape time (sync: the caller runs it in a thread)."""

    def collect(self):
        from quota.models import Reservation
        from quota.spool import spool_depth

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
            depth = spool_depth()
        except Exception:  # noqa: BLE001
            logger.warning("metrics: spool unreadable", exc_info=True)
        else:
            yield GaugeMetricFamily("gateway_settlements_spooled", "Settlements waiting in the spool for replay", depth)


_stores = CollectorRegistry(auto_describe=False)
_stores.register(StoreCollector())


def scrape() -> bytes:
    """The whole exposition (sync: reads files and the database)."""
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
