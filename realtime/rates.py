"""The rate limits of an open realtime session's responses: each response counts as a request
against the allocation's and the model's `rpm_limit`, whether the client asked for it
(`response.create`, checked before it is forwarded) or the upstream started it by itself (server
VAD: a `response.created` no client `response.create` preceded, counted when it is seen).

A mixin of the consumer, like SessionWatch."""

import json
from typing import TYPE_CHECKING

from quota import ratelimit

from .events import error_event

if TYPE_CHECKING:
    from . import services


class SessionRates:
    """Needs from the consumer: its opened session, `send`, `_send_upstream` and `client_gone`."""

    client_creates = 0  # response.create events forwarded whose response.created has not come back yet
    client_gone: bool

    if TYPE_CHECKING:

        @property
        def opened(self) -> services.Session: ...

        async def send(
            self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool | int = False
        ) -> None: ...

        async def _send_upstream(self, data: str | bytes) -> None: ...

    async def _rate_allows(self, event: dict) -> bool:
        """A response.create counts as a request; over the limits it is not forwarded and the
        client gets an error event (the session stays open)."""
        decision, _ = await ratelimit.admit_async(self.opened.entry.limits, tokens=0, count=True, hold=False)
        if decision.allowed:
            return True
        message = f"rate limit reached; retry in {decision.retry_after_s} s"
        await self.send(text_data=_rate_error(message, event.get("event_id")))
        return False

    def _client_create_forwarded(self) -> None:
        self.client_creates += 1

    async def _response_started(self) -> None:
        """An upstream `response.created`: the client's own create was counted already; one the
        server started counts now, and over the limits it is cancelled (the client is told)."""
        if self.client_creates:
            self.client_creates -= 1
            return
        if not self.opened.entry.limits:
            return
        decision, _ = await ratelimit.admit_async(self.opened.entry.limits, tokens=0, count=True, hold=False)
        if decision.allowed:
            return
        await self._send_upstream(json.dumps({"type": "response.cancel"}))
        if not self.client_gone:
            retry = decision.retry_after_s
            message = f"rate limit reached: the response the server started was cancelled; retry in {retry} s"
            await self.send(text_data=_rate_error(message, None))


def _rate_error(message: str, event_id: object) -> str:
    return error_event(type_="rate_limit_error", code="rate_limited", message=message, event_id=event_id)
