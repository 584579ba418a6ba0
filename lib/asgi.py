"""The ASGI shapes the gateway's own applications take (health, metrics, the /v1 handler, the
Host check): a scope and messages are plain dicts, as servers send them."""

from collections.abc import Awaitable, Callable, Mapping
from http.client import responses
from typing import Any, TypeAlias

from django.http.response import ResponseHeaders

Scope: TypeAlias = dict[str, Any]
Message: TypeAlias = Mapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
PartWriter: TypeAlias = Callable[[bytes], bool]


def no_part_writer(send: Send) -> PartWriter | None:
    return None


# The server's writer of a response's body parts past its ASGI messages: given a request's `send`
# once the response and its first part went through it, a function that writes one more part of
# that response at once and answers True, or False when the part must go as a message after all
# (its connection gone or finished); None when the server has no such writer. The server's patches
# install daphne's (gateway_project.server_patches); any other server sends every part as a message.
part_writer: Callable[[Send], PartWriter | None] = no_part_writer


_CHUNK = 2**16  # ASGIHandler.chunk_size


def header_value(value: str) -> str:
    """A response header's value as Django's HttpResponse stores it: plain ASCII as it is, anything
    else through Django's own conversion (latin-1, else MIME-encoded; a newline refused with
    BadHeaderError)."""
    if value.isascii() and "\n" not in value and "\r" not in value:
        return value
    return _DJANGO_HEADERS._convert_to_charset(value, "latin-1", mime_encode=True)


_DJANGO_HEADERS = ResponseHeaders({})


class Whole:
    """A whole answer (status, headers, body) sent as its two ASGI messages, for an application
    that answers without Django's request cycle: what an HttpResponse with the same content,
    status and headers would send through ASGIHandler.send_response (header names in the case
    given, in the order first set, values as HttpResponse converts them), without building the
    response's mapping or re-encoding its headers. Reads like an HttpResponse where callers read
    one: `status_code`, `content`, `response[name]` (case-insensitive), `has_header`, `items`,
    `reason_phrase`, `serialize_headers`."""

    __slots__ = ("status_code", "content", "_headers")
    streaming = False

    def __init__(self, content: bytes, status: int, headers: dict[str, tuple[str, str]]) -> None:
        # headers: lower-case name -> (name as sent, value already converted by header_value)
        self.status_code = status
        self.content = content
        self._headers = headers

    def __setitem__(self, name: str, value: str) -> None:
        self._headers[name.lower()] = (name, header_value(value))

    def __getitem__(self, name: str) -> str:
        return self._headers[name.lower()][1]

    def has_header(self, name: str) -> bool:
        return name.lower() in self._headers

    __contains__ = has_header

    def items(self) -> list[tuple[str, str]]:
        return list(self._headers.values())

    @property
    def reason_phrase(self) -> str:
        return responses.get(self.status_code, "Unknown Status Code")

    def serialize_headers(self) -> bytes:
        return b"\r\n".join(name.encode("ascii") + b": " + value.encode("latin-1") for name, value in self.items())

    async def send(self, send: Send) -> None:
        headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in self._headers.values()]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        content = self.content
        if len(content) <= _CHUNK:
            await send({"type": "http.response.body", "body": content, "more_body": False})
            return
        for start in range(0, len(content), _CHUNK):  # as Django chunks a body past 64 KiB
            await send(
                {
                    "type": "http.response.body",
                    "body": content[start : start + _CHUNK],
                    "more_body": start + _CHUNK < len(content),
                }
            )
