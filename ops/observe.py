"""What the relays report about each call: metrics (ops.metrics) and one log line on the
`gateway.calls` logger. Plain values in, nothing read back: the relays call it once per event and
it never raises into them.

The line carries ids, the model slug, the outcome, tokens, cost and timings; never a key, a
prompt, an upstream body or a provider secret (none is passed in). Metrics are counted only while
GATEWAY_METRICS_TOKEN is set (no one could read them otherwise); the line is written while the
logger is enabled for INFO.
"""

import logging
import threading
import time
from decimal import Decimal
from typing import Any

from lib.conf import setting
from quota.pricing import Usage

from . import metrics

logger = logging.getLogger("gateway.calls")
_INFO = logging.INFO


def _counting() -> bool:
    return bool(setting("GATEWAY_METRICS_TOKEN"))


def call_admitted() -> None:
    if _counting():
        metrics.add(metrics.IN_FLIGHT)


def attempt_failed(*, deployment_id: str | None, reason: str) -> None:
    """An upstream attempt that failed (connect error, timeout, 429, 5xx, 401/403): counted per
    deployment; the call it belonged to keeps one record, written when it settles."""
    try:
        if _counting():
            metrics.add(metrics.FAILED_ATTEMPTS, (deployment_id or "", reason))
    except Exception:  # noqa: BLE001 - reporting must never break a call
        logger.exception("attempt report failed")


def door_refused(*, path: str, status: int, code: str) -> None:
    """A /v1 request refused for its bearer before its body was read: counted only (no call record
    and no line each; allocations.auth_failures logs them per client address and minute)."""
    try:
        if _counting():
            outcome = "rejected_unauthenticated" if status == 401 else "rejected_rate_limited"
            metrics.record(((metrics.REQUESTS, (path, outcome, str(status)), 1.0), (metrics.REFUSALS, (code,), 1.0)))
    except Exception:  # noqa: BLE001 - reporting must never break a call
        logger.exception("door report failed")


def call_refused(
    *, request_id: str, endpoint: str, allocation_id: object, model: str, outcome: str, status: int, code: str
) -> None:
    """A call refused before going upstream (its record is written by the accounting step)."""
    try:
        if _counting():
            metrics.record(
                ((metrics.REQUESTS, (endpoint, outcome, str(status)), 1.0), (metrics.REFUSALS, (code,), 1.0))
            )
        if logger.isEnabledFor(_INFO):
            fields = {
                "request_id": request_id,
                "endpoint": endpoint,
                "allocation_id": str(allocation_id) if allocation_id else None,
                "model": model or None,
                "outcome": outcome,
                "status": status,
                "error_code": code,
            }
            _line(fields)
    except Exception:  # noqa: BLE001 - reporting must never break a call
        logger.exception("call report failed for %s", request_id)


_templates = threading.local()


def _line(fields: dict) -> None:
    """logger.info("call", …) at a third of the cost: a LogRecord copied from one made once per
    thread (its process, thread and source fields do not change between lines), with the time set
    anew, instead of one built from scratch with the caller's frame looked up (docs/PERFORMANCE.md)."""
    template = getattr(_templates, "record", None)
    if template is None:
        template = _templates.record = logger.makeRecord(logger.name, _INFO, "", 0, "call", (), None).__dict__
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(template)
    now = time.time()
    record.created, record.msecs = now, int((now - int(now)) * 1000) + 0.0
    record.relativeCreated = template["relativeCreated"] + (now - template["created"]) * 1000
    record.gateway_fields = fields
    logger.handle(record)


def call_finished(
    *,
    request_id: str,
    endpoint: str,
    allocation_id: object,
    model: str,
    provider: str,
    outcome: str,
    status: int,
    usage: Usage,
    cost: Decimal | None,
    elapsed_s: float,
    upstream_s: float | None,
    code: str = "",
    stream: bool = False,
    admitted: bool = True,
    close_reason: str = "",
) -> None:
    """An admitted call (or realtime session) settled: its outcome, usage and timings."""
    try:
        if _counting():
            _count(endpoint, model, provider, outcome, status, usage, cost, elapsed_s, upstream_s, admitted)
        if logger.isEnabledFor(_INFO):
            fields = {
                "request_id": request_id,
                "endpoint": endpoint,
                "allocation_id": str(allocation_id) if allocation_id else None,
                "model": model,
                "outcome": outcome,
                "status": status,
                "stream": stream,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cached_tokens": usage.cached_tokens,
                "quantity": str(usage.quantity) if usage.quantity is not None else None,
                "unit": usage.unit or None,
                "cost_usd": _usd(cost),
                **_timings(elapsed_s, upstream_s),
                "error_code": code or None,
                "close_reason": close_reason or None,
            }
            _line(fields)
    except Exception:  # noqa: BLE001 - reporting must never break a call
        logger.exception("call report failed for %s", request_id)


def _usd(cost: Decimal | None) -> str | None:
    """A cost as plain decimal text: "0" for any zero (not "0E-9"), else its digits as stored."""
    if cost is None:
        return None
    return "0" if cost == 0 else format(cost, "f")


def _timings(elapsed_s: float, upstream_s: float | None) -> dict:
    if upstream_s is None:  # never sent upstream, or a realtime session (relayed both ways throughout)
        return {"duration_ms": round(elapsed_s * 1000, 1)}
    return {
        "gateway_ms": round(max(elapsed_s - upstream_s, 0.0) * 1000, 1),
        "upstream_ms": round(upstream_s * 1000, 1),
    }


def _count(
    endpoint: str,
    model: str,
    provider: str,
    outcome: str,
    status: int,
    usage: Usage,
    cost: Decimal | None,
    elapsed_s: float,
    upstream_s: float | None,
    admitted: bool,
) -> None:
    added: list[tuple[Any, tuple, float]] = [(metrics.REQUESTS, (endpoint, outcome, str(status)), 1.0)]
    observed: list[tuple[Any, tuple, float]] = []
    if admitted:
        added.append((metrics.IN_FLIGHT, (), -1.0))
    if upstream_s is not None:
        observed.append((metrics.UPSTREAM, (endpoint,), upstream_s))
        observed.append((metrics.OVERHEAD, (endpoint,), max(elapsed_s - upstream_s, 0.0)))
    if outcome == "upstream_error":
        added.append((metrics.UPSTREAM_ERRORS, (provider, endpoint), 1.0))
    if usage.input_tokens:
        added.append((metrics.TOKENS, (model, "input"), usage.input_tokens))
    if usage.output_tokens:
        added.append((metrics.TOKENS, (model, "output"), usage.output_tokens))
    if cost:
        added.append((metrics.SPEND, (model,), float(cost)))
    metrics.record(added, observed)


def session_opened() -> None:
    if _counting():
        metrics.add(metrics.SESSIONS_OPEN)


def session_closed() -> None:
    if _counting():
        metrics.add(metrics.SESSIONS_OPEN, (), -1.0)
