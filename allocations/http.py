"""What every interface reads from a request the same way: the client address and the request id.

Audit events, login limits, the /v1 door's failed-bearer limit, call records and error envelopes
all use these functions, so a request id or an address means the same thing on `/v1`, `/api/`, the
portal and Django admin.
"""

import ipaddress
import re
import uuid

from django.conf import settings

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def request_id_from(sent: str) -> str:
    """The caller's `X-Request-Id` when it is safe to log and store, else a new UUID."""
    return sent if REQUEST_ID.fullmatch(sent) else str(uuid.uuid4())


def request_id_of(request) -> str:
    """request_id_from the request's header, once per request."""
    rid = getattr(request, "gateway_request_id", None)
    if rid is None:
        sent = request.META.get("HTTP_X_REQUEST_ID", "")  # = request.headers["X-Request-Id"], without building them all
        rid = request.gateway_request_id = request_id_from(sent)
    return rid


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_address(*, remote: str, forwarded_for: str) -> str | None:
    """The client address: with N trusted proxies, the N-th `X-Forwarded-For` hop from the right.
    None when there is no valid address (audit events store an address or nothing)."""
    peer = _address(remote or "")
    trusted = settings.GATEWAY_TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return peer
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    if not hops:
        return peer
    # Each trusted proxy appended the address it saw; anything further left is client-supplied.
    # A forged or garbled hop is not an address to store or count by: the peer's stands instead.
    return _address(hops[-trusted] if len(hops) >= trusted else hops[0]) or peer


def client_ip(request) -> str | None:
    """client_address for a Django request."""
    return client_address(
        remote=request.META.get("REMOTE_ADDR", ""), forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", "")
    )
