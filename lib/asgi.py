"""The ASGI shapes the gateway's own applications take (health, metrics, the /v1 handler, the
Host check): a scope and messages are plain dicts, as servers send them."""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

Scope: TypeAlias = dict[str, Any]
Message: TypeAlias = Mapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
