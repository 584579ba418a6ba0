"""GET /healthz, /readyz and /metrics: a small ASGI app routed before Django (gateway_project.asgi).

No middleware (no HTTPS redirect: a load balancer probes over plain HTTP; the Host header is checked
against ALLOWED_HOSTS by gateway_project.asgi, as for /v1), no call record, no metric of their own.
/healthz does no I/O. /readyz runs the dependency checks in threads, each within READY_TIMEOUT_S (ops.health says what
readiness means).
/metrics needs `Authorization: Bearer $GATEWAY_METRICS_TOKEN` and is 404 while that is unset.
"""

import asyncio
import hmac
import json
import uuid
from collections.abc import Callable

from django.conf import settings

from lib.api_errors import error_body
from lib.asgi import Receive, Scope, Send

from . import health, metrics

PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
READY_TIMEOUT_S = 5.0
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json", head: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _error(code: str, message: str, type_: str) -> bytes:
    return json.dumps(error_body(code=code, message=message, type_=type_, request_id=str(uuid.uuid4()))).encode()


async def _timed(check: Callable[[], object]) -> object:
    try:
        return await asyncio.wait_for(asyncio.to_thread(check), READY_TIMEOUT_S)
    except TimeoutError:
        return f"timed out after {READY_TIMEOUT_S:g}s"


async def _ready() -> tuple[int, bytes]:
    """Readiness (health.CHECKS: 503 when one fails, naming it) and the detail beside it (Redis,
    the Celery heartbeats: shown, never a reason for 503)."""
    *results, detail = await asyncio.gather(*map(_timed, health.CHECKS.values()), _timed(health.detail))
    problems = dict(zip(health.CHECKS, results, strict=True))
    failed = [name for name, problem in problems.items() if problem]
    body: dict[str, object] = {
        "status": "unavailable" if failed else "ok",
        "checks": {name: problem or ("ok" if name != "draining" else "no") for name, problem in problems.items()},
        "detail": detail if isinstance(detail, dict) else {"redis": detail},
    }
    if failed:
        body["failed"] = failed
    return (503 if failed else 200), json.dumps(body).encode()


def _authorized(scope: Scope) -> bool:
    sent = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
    expected = b"Bearer " + settings.GATEWAY_METRICS_TOKEN.encode()
    return hmac.compare_digest(sent, expected)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    path, method = scope["path"], scope["method"]
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return await _send(send, 405, _error("method_not_allowed", "use GET", "invalid_request_error"))
    if path == "/healthz":
        return await _send(send, 200, b'{"status":"ok"}', head=head)
    if path == "/readyz":
        status, body = await _ready()
        return await _send(send, status, body, head=head)
    if not settings.GATEWAY_METRICS_TOKEN:
        return await _send(send, 404, _error("not_found", "metrics are disabled", "invalid_request_error"))
    if not _authorized(scope):
        body = _error("unauthorized", "send 'Authorization: Bearer <metrics token>'", "authentication_error")
        return await _send(send, 401, body)
    return await _send(send, 200, await asyncio.to_thread(metrics.scrape), PROMETHEUS_TEXT, head=head)
