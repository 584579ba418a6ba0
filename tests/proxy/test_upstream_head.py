"""The upstream request's bytes: proxy.upstream's session sends the head and body aiohttp's session
with `skip_auto_headers=("User-Agent",)` sends (no User-Agent of aiohttp's, its other automatic
headers), captured raw by a loopback server."""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.hdrs import METH_POST
from multidict import CIMultiDict

from proxy import upstream

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
JSON = {"Authorization": "Bearer sk-up", "Content-Type": "application/json", "X-Request-Id": "req-1"}


async def _parts() -> AsyncIterator[bytes]:
    for part in (b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n', b"x" * 3000, b"\r\n--b--\r\n"):
        yield part


CASES = {
    "json": (JSON, lambda: b'{"model": "m", "messages": []}'),
    "no content type": ({"X-Request-Id": "req-2"}, lambda: b"raw"),
    "streamed multipart": ({**JSON, "Content-Type": "multipart/form-data; boundary=b"}, _parts),
    "the caller's user agent and accept": (
        {**JSON, "User-Agent": "mine/1", "Accept": "text/event-stream"},
        lambda: b"{}",
    ),
    "empty": (JSON, lambda: b""),
}


class _Capture:
    """A loopback HTTP/1.1 server keeping each request's raw bytes (head and body)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = (line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
                lowered = {name.lower(): value for name, value in lines}
                if lowered.get(b"transfer-encoding") == b"chunked":
                    body = await reader.readuntil(b"0\r\n\r\n")
                else:
                    body = await reader.readexactly(int(lowered.get(b"content-length", b"0")))
                self.requests.append(head + body)
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _sent(headers: dict, payload, **options) -> tuple[bytes, bytes]:
    """What proxy.upstream's session and a session skipping the User-Agent send (the same
    request twice each: on a new connection, then on the same one kept alive)."""
    capture = _Capture()
    server = await asyncio.start_server(capture.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        for ours in (True, False):
            session = upstream.session() if ours else _skipping_session()
            try:
                for _ in range(2):
                    response = await session._request(
                        METH_POST, url, data=payload(), headers=CIMultiDict(headers), allow_redirects=False, **options
                    )
                    assert await response.read() == b"{}"
                    response.release()
            finally:
                await (upstream.session_close() if ours else session.close())
    finally:
        server.close()
        await server.wait_closed()
    first, again, reference, reference_again = capture.requests
    assert (first, reference) == (again, reference_again)
    return first, reference


def _skipping_session() -> aiohttp.ClientSession:
    """The session as it was made with aiohttp's own request and a skipped User-Agent."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


@pytest.mark.parametrize("case", list(CASES))
async def test_the_upstream_request_is_the_bytes_of_a_session_skipping_the_user_agent(case):
    headers, payload = CASES[case]
    ours, reference = await _sent(headers, payload)
    assert ours == reference
    head = ours.split(b"\r\n\r\n", 1)[0].lower()
    assert (b"\r\nuser-agent: " in head) is ("User-Agent" in headers)
    assert b"\r\naccept-encoding: " in head and b"\r\naccept: " in head


async def test_a_request_given_names_to_skip_skips_them_and_the_user_agent():
    ours, reference = await _sent(JSON, lambda: b"{}", skip_auto_headers=("Accept-Encoding",))
    assert ours == reference
    assert b"accept-encoding" not in ours.lower() and b"user-agent" not in ours.lower()
