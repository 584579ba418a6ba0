"""What every interface reads from a request the same way: the client address and the request id.

Audit events, login limits, the /v1 door's failed-bearer limit, call records and error envelopes
all use these functions, so a request id or an address means the same thing on `/v1`, `/api/`, the
portal and Django admin.
"""

import functools
import ipaddress
import re

from django.conf import settings
from django.http import HttpRequest
from django.http.request import split_domain_port, validate_host

from .conf import setting
from .ids import uuid7_text

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
DEBUG_HOSTS = (".localhost", "127.0.0.1", "[::1]")  # Django's own when DEBUG and ALLOWED_HOSTS is empty
_hosts: tuple[object, dict[bytes, bool]] = (None, {})  # (the ALLOWED_HOSTS they were judged by, verdicts)


def request_id_from(sent: str) -> str:
    """The caller's `X-Request-Id` when it is safe to log and store, else a new time-ordered UUID
    (lib.ids: the call records' request-id index grows at its end)."""
    return sent if REQUEST_ID.fullmatch(sent) else uuid7_text()


def request_id_of(request: HttpRequest) -> str:
    """request_id_from the request's header, once per request."""
    rid = getattr(request, "gateway_request_id", None)
    if rid is None:
        sent = sent_header(request, "HTTP_X_REQUEST_ID")  # = request.headers["X-Request-Id"], without building them all
        rid = request_id_from(sent)
        request.gateway_request_id = rid  # type: ignore[attr-defined]
    return rid


def sent_header(request: HttpRequest, key: str) -> str:
    """request.META.get(key, "") for an HTTP_* key; a request that can read it without building its
    META (proxy.handler's, `sent_header`) does."""
    reader = getattr(request, "sent_header", None)
    return reader(key) if reader is not None else request.META.get(key, "")


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_address(*, remote: str, forwarded_for: str) -> str | None:
    """The client address: the direct peer's, unless the peer is one of GATEWAY_TRUSTED_PROXIES;
    then the N-th `X-Forwarded-For` hop from the right, N = GATEWAY_TRUSTED_PROXY_COUNT (at least 1).
    None when there is no valid address (audit events store an address or nothing)."""
    peer = _address(remote or "")
    if peer is None or not forwarded_for or not peer_trusted(peer):
        return peer  # anyone may send the header; only the proxies in front of us are believed
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    if not hops:
        return peer
    # Each trusted proxy appended the address it saw; anything further left is client-supplied.
    # A forged or garbled hop is not an address to store or count by: the peer's stands instead.
    count = max(1, settings.GATEWAY_TRUSTED_PROXY_COUNT)
    return _address(hops[-count] if len(hops) >= count else hops[0]) or peer


def peer_trusted(peer: str) -> bool:
    """Whether a (valid) peer address is inside GATEWAY_TRUSTED_PROXIES."""
    networks = trusted_networks(tuple(settings.GATEWAY_TRUSTED_PROXIES))
    if not networks:
        return False
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@functools.lru_cache(maxsize=8)
def trusted_networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The CIDR list parsed once (settings.py refuses to start with an invalid entry)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def client_ip(request: HttpRequest) -> str | None:
    """client_address for a Django request."""
    return client_address(
        remote=request.META.get("REMOTE_ADDR", ""), forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", "")
    )


def host_allowed(host: bytes) -> bool:
    """Django's ALLOWED_HOSTS rule (HttpRequest.get_host) for a raw Host header, for the paths
    served before Django's middleware (/v1, the ops endpoints). Each distinct header is judged once
    per ALLOWED_HOSTS value: a call pays a dict lookup."""
    global _hosts
    allowed = setting("ALLOWED_HOSTS")
    judged_by, verdicts = _hosts
    if judged_by is not allowed:
        verdicts = {}
        _hosts = (allowed, verdicts)
    verdict = verdicts.get(host)
    if verdict is None:
        domain, _port = split_domain_port(host.decode("latin1"))
        patterns = allowed or (DEBUG_HOSTS if settings.DEBUG else ())
        verdict = bool(domain) and validate_host(domain, patterns)
        if len(verdicts) >= 1000:  # a client sending many names gets them judged again, not remembered
            verdicts.clear()
        verdicts[host] = verdict
    return verdict
