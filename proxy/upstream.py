"""Upstream adapters and the one shared aiohttp session per process.

aiohttp's ClientSession, not httpx: on this 2-core machine an httpx.AsyncClient pass-through fell
from 615 to 104 requests/s between 1 and 64 concurrent requests while aiohttp held ~2,000
(shared/bench/ANCHORS.md). The session is created lazily on the serving loop and closed on the ASGI
lifespan shutdown (proxy.handler).

URL rules:
- openai (any OpenAI-compatible server): `{base_url}/{path}`, `Authorization: Bearer <key>`;
  base_url includes the version prefix, e.g. `https://api.openai.com/v1`.
- azure: api_version empty or "v1" -> the v1 API `{base_url}/openai/v1/{path}` (model = the
  deployment name in the body); any other api_version ->
  `{base_url}/openai/deployments/{deployment}/{path}?api-version={api_version}`; header `api-key`.
- simulated: in-process (proxy.simulated), no network.
"""

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.hdrs import METH_POST, USER_AGENT
from multidict import CIMultiDict
from yarl import URL

from allocations.access import ScopedAllocation
from allocations.models import ProviderKind
from lib.bounded import BoundedCache
from lib.conf import setting
from quota.exceptions import UpstreamError, UpstreamTimeout

from . import simulated
from .registry import Endpoint

_state: dict = {}


class _Request(aiohttp.ClientRequest):
    """aiohttp's request without its automatic User-Agent: the upstream request's head is what a
    session's `skip_auto_headers=("User-Agent",)` gives (aiohttp's other automatic headers, no
    User-Agent unless the caller sends one), without the sorted multidict of the skipped names and
    the copy of the headers aiohttp makes for that on every request (gateway_project.server_patches,
    `aiohttp_request_no_user_agent`). A request given names to skip skips User-Agent with them."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        if skip_auto_headers is not None:
            super().update_auto_headers({*skip_auto_headers, USER_AGENT})
            return
        headers = self.headers
        for name, value in self.DEFAULT_HEADERS.items():
            if name not in headers:
                headers[name] = value


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    current = _state.get("session")
    if current is None or current.closed or _state.get("loop") is not loop:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        # No cookie jar: one session serves every member, so a provider's Set-Cookie stored for one
        # member's call would go out on the next call of any other member to that provider (and the
        # default jar filters its cookies for every request's URL and parses every answer's).
        current = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            request_class=_Request,  # no User-Agent of aiohttp's
        )
        _state.update(session=current, loop=loop)
    return current


async def session_close() -> None:
    current = _state.pop("session", None)
    _state.pop("loop", None)
    if current is not None and not current.closed:
        await current.close()


@dataclass(frozen=True)
class Target:
    url: URL | str  # parsed once (aiohttp parses a string on every request); str: yarl refused it
    headers: dict
    secrets: tuple[str, ...]


_targets: BoundedCache = BoundedCache(10_000)


def target_for(entry: ScopedAllocation, endpoint: Endpoint) -> Target:
    """Built once per (provider, upstream model name, path): a pure function of the three."""
    key = (entry.provider, entry.upstream_name, endpoint.path)
    target = _targets.get(key)
    if target is None:
        target = _targets[key] = _target_for(entry, endpoint)
    return target


def _target_for(entry: ScopedAllocation, endpoint: Endpoint) -> Target:
    provider = entry.provider
    base = provider.base_url.rstrip("/")
    secrets = tuple(s for s in (provider.api_key, base, urlsplit(base).netloc) if s)
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if provider.kind == ProviderKind.AZURE:
        if provider.api_version in ("", "v1"):
            url = f"{base}/openai/v1/{endpoint.path}"
        else:
            deployment = quote(entry.upstream_name, safe="")
            url = f"{base}/openai/deployments/{deployment}/{endpoint.path}?api-version={quote(provider.api_version)}"
        secrets += (entry.upstream_name,)
        if provider.api_key:
            headers["api-key"] = provider.api_key
    else:
        url = f"{base}/{endpoint.path}"
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
    return Target(url=_parsed(url), headers=headers, secrets=secrets)


def _parsed(url: str) -> URL | str:
    try:
        return URL(url)
    except ValueError:  # e.g. a port past 65535, which the URLField lets through: aiohttp refuses
        return url  # it per call with a ClientError, so the call ends as any unreachable upstream


_timeouts: dict[float, aiohttp.ClientTimeout] = {}


def timeout_for(limit: float) -> aiohttp.ClientTimeout:
    """One (immutable) ClientTimeout per value of the setting instead of one per call."""
    timeout = _timeouts.get(limit)
    if timeout is None:
        timeout = _timeouts[limit] = aiohttp.ClientTimeout(total=None, connect=limit, sock_read=limit)
    return timeout


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


class Reply:
    """An upstream answer, read whole or chunk by chunk as it arrives."""

    secrets: tuple[str, ...] = ()  # set by send(): strings to redact from its error body

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    @property
    def retry_after(self) -> str | None:
        return self.response.headers.get("Retry-After")

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def read(self) -> bytes:
        return await self.response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        self._watch_reads()
        return self.response.content.iter_any()

    def close(self) -> None:
        # close(), not release(): an unfinished body must cut the upstream call (client went away).
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.response.close()

    _watch: asyncio.TimerHandle | None = None

    def _watch_reads(self) -> None:
        """The read timeout of a body read chunk by chunk (a stream): aiohttp re-arms its sock_read
        timer on every chunk that arrives (one timer cancelled and one scheduled per chunk). Here the
        connection's timer is stopped and one watchdog per body looks every tenth of the timeout
        whether bytes came; after a silence of the whole timeout it fails the read as aiohttp's
        timer does (the same exception, so the same outcome), at most a tenth of it late. It stops
        once the body is whole or the connection went back to the pool.
        Relies on aiohttp's ResponseHandler (gateway_project.server_patches: aiohttp_stream_read_timeout)."""
        connection = self.response.connection
        protocol = connection.protocol if connection is not None else None
        limit = protocol.read_timeout if protocol is not None else None
        if protocol is None or not limit or self._watch is not None:
            return
        protocol.read_timeout = None
        protocol._drop_timeout()
        content, loop, period = self.response.content, asyncio.get_running_loop(), limit / 10
        seen = [content.total_bytes, loop.time()]  # bytes read so far, and when they last grew

        def look() -> None:
            self._watch = None
            if self.response.connection is not connection or content.is_eof():
                return
            now = loop.time()
            if content.total_bytes != seen[0]:
                seen[:] = [content.total_bytes, now]
            elif now - seen[1] >= limit:
                protocol._on_read_timeout()
                return
            self._watch = loop.call_later(period, look)

        self._watch = loop.call_later(period, look)


# What `send` answers: a real upstream's reply, or the built-in simulated provider's (same surface).
AnyReply: TypeAlias = Reply | simulated.SimReply


async def send(
    *,
    entry: ScopedAllocation,
    endpoint: Endpoint,
    body: dict,
    payload: bytes | AsyncIterable[bytes],
    request_id: str,
    headers: dict | None = None,
) -> AnyReply:
    """Opens the upstream call; returns once the status and headers are in. `payload` is bytes or an
    async iterator (a multipart upload, proxy.multipart); `headers` override (its Content-Type/-Length)."""
    if entry.provider.kind == ProviderKind.SIMULATED:
        return simulated.reply(endpoint.name, body)
    target = target_for(entry, endpoint)
    limit = setting("GATEWAY_UPSTREAM_TIMEOUT_S")
    timeout = timeout_for(limit)
    # A CIMultiDict: aiohttp copies a plain dict into one first (ClientSession._prepare_headers).
    sent = CIMultiDict(target.headers)
    sent["X-Request-Id"] = request_id
    if headers:
        sent.update(headers)  # replaces (a multipart's Content-Type), as the last of equal names did
    try:
        # Never follow a redirect: it would carry the provider key (Azure's `api-key` survives a
        # cross-origin hop in aiohttp) and the body to wherever the upstream points.
        # The coroutine ClientSession.post wraps, awaited without its context manager
        # (gateway_project.server_patches, `aiohttp_request_unwrapped`).
        response = await session()._request(
            METH_POST, target.url, data=payload, headers=sent, timeout=timeout, allow_redirects=False
        )
    except TimeoutError:
        raise UpstreamTimeout(f"the upstream did not answer within {limit:g} s") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"the upstream could not be reached ({redact(type(exc).__name__, target.secrets)})"
        ) from None
    reply = Reply(response)
    reply.secrets = target.secrets
    return reply


def upstream_error_detail(body: bytes, secrets: tuple[str, ...]) -> tuple[str, str]:
    """(code, message) of an upstream error body, redacted."""
    text = body[:4000].decode("utf-8", "replace")
    code, message = "", text
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code") or error.get("type") or ""), str(error.get("message") or "")
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError, RecursionError):
        pass
    return redact(code, secrets)[:64], redact(message, secrets)[:500]
