"""The ASGI shapes the gateway's own applications take (health, metrics, the /v1 handler, the
Host check): a scope and messages are plain dicts, as servers send them."""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

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
