"""What every interface reads from a request the same way: the client address and the request id.

Audit events, login limits, call records and error envelopes all use these two functions, so a
request id or an address means the same thing on `/v1`, `/api/`, the portal and Django admin.
"""

import ipaddress
import re
import uuid

from django.conf import settings

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def request_id_of(request) -> str:
    """The caller's `X-Request-Id` when it is safe to log and store, else a new UUID; once per request."""
    rid = getattr(request, "gateway_request_id", None)
    if rid is None:
        sent = request.META.get("HTTP_X_REQUEST_ID", "")  # = request.headers["X-Request-Id"], without building them all
        rid = request.gateway_request_id = sent if REQUEST_ID.fullmatch(sent) else str(uuid.uuid4())
    return rid


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request) -> str | None:
    """The client address: with N trusted proxies, the N-th `X-Forwarded-For` hop from the right.
    None when there is no valid address (audit events store an address or nothing)."""
    remote = _address(request.META.get("REMOTE_ADDR", "") or "")
    trusted = settings.GATEWAY_TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    if not hops:
        return remote
    # Each trusted proxy appended the address it saw; anything further left is client-supplied.
    # A forged or garbled hop is not an address to store or count by: the peer's stands instead.
    return _address(hops[-trusted] if len(hops) >= trusted else hops[0]) or remote
