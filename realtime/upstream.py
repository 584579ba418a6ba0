"""The upstream side of a realtime session: one WebSocket to OpenAI or Azure (the `websockets`
library), or the in-process simulated provider, behind the same three-method link.

The provider key travels only in the upstream handshake headers; no error raised here names the
provider's key, base URL or deployment.
"""

from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.conf import settings
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from allocations.access import ScopedAllocation
from ops import observe
from quota import routing

RETRY_STATUSES = {408, 425, 429, 502, 503, 504}
# Azure api-version values that mean the GA `/openai/v1/realtime` route rather than the preview one.
AZURE_GA_VERSIONS = {"", "v1", "ga", "latest"}


class UpstreamClosed(Exception):
    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"upstream closed ({code})")
        self.code, self.reason = code, reason


class UpstreamConnectError(Exception):
    """`retry` is true when the upstream said to come back later (HTTP 429/503 …): close 1013."""

    def __init__(self, message: str, *, retry: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.retry, self.status = message, retry, status


class UpstreamLink(Protocol):
    """The three-method link a session relays through (WebsocketsLink or the simulated provider)."""

    async def send(self, data: str | bytes) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self, code: int = 1000) -> None: ...


class _connect_without_redirects(websockets_connect):  # noqa: N801 - websockets' own naming
    """websockets follows a 3xx handshake answer, cross-origin included, with the same headers
    (the provider key). A redirect is answered as the refusal it is instead."""

    def process_redirect(self, exc: Exception) -> Exception:
        return exc


class WebsocketsLink:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, data: str | bytes) -> None:
        try:
            await self.connection.send(data)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def recv(self) -> str | bytes:
        try:
            return await self.connection.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = 1000) -> None:
        await self.connection.close(code)


def _closed(exc: ConnectionClosed) -> UpstreamClosed:
    if exc.sent is not None and exc.sent.code == 1009:  # the upstream sent a frame over the bound
        return UpstreamClosed(1009, "")
    if exc.rcvd is None:
        return UpstreamClosed(1006, "")
    return UpstreamClosed(exc.rcvd.code, exc.rcvd.reason)


def _ws_base(base_url: str) -> tuple[str, str]:
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return scheme, urlunsplit((scheme, parts.netloc, parts.path, "", ""))


def upstream_target(entry: ScopedAllocation, *, intent: str = "", with_model: bool = True) -> tuple[str, dict]:
    """(URL, headers) of the upstream handshake for an OpenAI or Azure provider."""
    provider = entry.provider
    _, base = _ws_base(provider.base_url)
    if provider.kind == "azure":
        for suffix in ("/openai/v1", "/openai"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        if provider.api_version.lower() in AZURE_GA_VERSIONS:
            url, query = f"{base}/openai/v1/realtime", {"model": entry.upstream_name}
        else:
            url, query = (
                f"{base}/openai/realtime",
                {"api-version": provider.api_version, "deployment": entry.upstream_name},
            )
        headers = {"api-key": provider.api_key}
    else:
        url, query = f"{base}/realtime", ({"model": entry.upstream_name} if with_model else {})
        headers = {"Authorization": f"Bearer {provider.api_key}"}
    if intent:
        query["intent"] = intent
    return f"{url}?{urlencode(query)}", headers


async def upstream_connect(
    entry: ScopedAllocation,
    *,
    intent: str = "",
    with_model: bool = True,
    extra_headers: dict,
    max_size: int,
    open_timeout_s: float,
) -> UpstreamLink:
    """Opens the upstream link. Raises UpstreamConnectError (message safe to record)."""
    if entry.provider.kind == "simulated":
        from .simulated import SimulatedLink

        return SimulatedLink(model=entry.upstream_name, intent=intent)
    url, headers = upstream_target(entry, intent=intent, with_model=with_model)
    try:
        connection = await _connect_without_redirects(
            url,
            additional_headers={**extra_headers, **headers},
            max_size=max_size,
            open_timeout=open_timeout_s,
            compression=None,
            proxy=None,
            user_agent_header="ai-gateway-realtime",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise UpstreamConnectError(
            f"upstream refused the session (HTTP {status})", retry=status in RETRY_STATUSES, status=status
        ) from None
    except (OSError, TimeoutError, WebSocketException):
        raise UpstreamConnectError("upstream unreachable") from None
    return WebsocketsLink(connection)


async def upstream_connect_routed(
    entry: ScopedAllocation, **connect: Any
) -> tuple[UpstreamLink, ScopedAllocation, int]:
    """upstream_connect over the model's deployments in routing order (quota.routing): a refused or
    failed handshake moves the session to the next one, at most GATEWAY_FAILOVER_ATTEMPTS times.
    Returns (the link, the entry of the deployment that took it, the attempts made); raises the
    last UpstreamConnectError."""
    candidates = await routing.plan(entry)
    budget, attempts = 1 + settings.GATEWAY_FAILOVER_ATTEMPTS, 0
    failure = UpstreamConnectError("no deployment of this model is under its rate limit", retry=True)
    for deployment in candidates:
        if budget == 0:
            break
        if await routing.limit_take(deployment, tokens=0) is False:
            continue
        routed, budget, attempts = routing.routed(entry, deployment), budget - 1, attempts + 1
        try:
            return await upstream_connect(routed, **connect), routed, attempts
        except UpstreamConnectError as error:
            failure = error
            status = error.status
            observe.attempt_failed(deployment_id=routed.deployment_id, reason=str(status or "connect"))
            if status is not None and not routing.moves(status):
                break
            await routing.attempt_failed(routed.deployment_id, status=status, retry_after=None)
    failure.attempts = attempts  # type: ignore[attr-defined]
    raise failure
