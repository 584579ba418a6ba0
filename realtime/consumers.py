"""`/v1/realtime`: the WebSocket relay (SPEC 6).

One consumer per client socket. The dispatch loop relays client frames upstream (in order, each
awaited, so a slow upstream pushes back on the client); a reader task relays upstream frames to
the client; a watch task closes the session within a second when the key, member, allocation or
a cap says so. Every close path goes through `_finish`, which runs once and writes the session's
single call record before the client sees the close frame.
"""

import asyncio
import json
import logging
import weakref
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from allocations.access import key_scope
from allocations.auth_failures import auth_blocked, auth_failed
from allocations.exceptions import BadRequest, GatewayError, Unauthorized
from lib import inflight
from lib.asgi import Receive, Scope, Send
from lib.http import client_address
from lib.ids import uuid7
from quota import admission
from quota.admission import Refused
from quota.billing import bill as billing
from quota.exceptions import RequestTooLarge, UpstreamError
from quota.ledger import threads
from quota.models import CloseReason, Outcome
from quota.pricing import Usage

from . import observed, services
from .close import CloseCode, close_code_for
from .events import error_event, foreign_model, model_in_session_update, rewrite_model
from .meter import SessionMeter
from .rates import SessionRates
from .upstream import UpstreamClosed, UpstreamConnectError, UpstreamLink, upstream_connect_routed
from .watch import SessionWatch

logger = logging.getLogger(__name__)

KEY_SUBPROTOCOL = "openai-insecure-api-key."
KEY_PARAMS = {"api_key", "api-key", "key", "token", "access_token", "authorization", "openai-insecure-api-key"}
BILLABLE = {"response.create", "input_audio_buffer.commit"}
SESSION_UPDATES = {"session.update", "transcription_session.update"}
UPSTREAM_MARKERS = ('"response.', '"conversation.item.input_audio_transcription.completed"')
ABORT_WAIT_S = 3.0  # how long a client abort waits for the cancelled response's usage

# Open sessions of this process, finished first when the server shuts down (lib.inflight).
LIVE: weakref.WeakSet = weakref.WeakSet()


async def shutdown_sessions() -> None:
    await asyncio.gather(
        *(c._finish(CloseReason.SHUTDOWN, Outcome.GATEWAY_ERROR, CloseCode.GOING_AWAY, cut=True) for c in list(LIVE))
    )


inflight.on_shutdown("realtime sessions", shutdown_sessions)


class RealtimeConsumer(SessionWatch, SessionRates, AsyncWebsocketConsumer):
    channel_layer_alias = "realtime-unused"  # no channel-layer round trip per socket (see docs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_id = uuid7().hex  # time-ordered, as lib.http makes them
        self.meter = SessionMeter()
        self.session: services.Session | None = None
        self.link: UpstreamLink | None = None
        self.plaintext = self.model_name = self.intent = ""
        self.address = "unknown"  # the client's, for the failed-auth limit (set at connect)
        self.extra_headers: dict = {}
        self.tasks: list[asyncio.Task] = []
        self.finishing: asyncio.Future | None = None
        self.client_gone = False
        self.response_done = asyncio.Event()
        self.billed_version = 0
        self.renewed_at = 0.0
        self.capped = True  # until the watch has read the allocation
        self.generation_lost = False
        self.deadline: asyncio.Task | None = None  # the first-frame timeout of a socket without ?model=

    @property
    def opened(self) -> services.Session:
        """The open session; only read after `_open` succeeded (the event loop and the finish run after it)."""
        if self.session is None:
            raise RuntimeError(f"realtime session {self.request_id} is not open")
        return self.session

    @property
    def upstream(self) -> UpstreamLink:
        """The upstream link; only read once `_open` connected it (relay tasks start after)."""
        if self.link is None:
            raise RuntimeError(f"realtime session {self.request_id} has no upstream link")
        return self.link

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # Cancelled from outside (a server shutdown past its grace, a test harness):
            # bill and close, then end normally, so that a gather waiting on every application is
            # not cut short by the first one that re-raised.
            await self._finish(CloseReason.SHUTDOWN, Outcome.GATEWAY_ERROR, CloseCode.GOING_AWAY, cut=True)
        except Exception:
            # A bug or a database failure inside a handler: the session still gets its one record
            # (or, if the database is what failed, its reservation stays for the sweeper).
            logger.exception("realtime session %s: internal error", self.request_id)
            await self._finish(
                CloseReason.SHUTDOWN,
                Outcome.GATEWAY_ERROR,
                CloseCode.INTERNAL_ERROR,
                error_code=GatewayError.code,
                cut=True,
            )

    # --- handshake -------------------------------------------------------------------------

    async def connect(self) -> None:
        params = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope.get("headers", [])}
        offered = self.scope.get("subprotocols") or []
        await self.accept(subprotocol="realtime" if "realtime" in offered else None)
        peer = (self.scope.get("client") or ("", 0))[0] or ""
        self.address = client_address(remote=peer, forwarded_for=headers.get("x-forwarded-for", "")) or "unknown"
        if (blocked := await auth_blocked(self.address)) is not None:
            return await self._refuse_at_door(blocked)
        if any(k.lower() in KEY_PARAMS for k in params) or any(
            v.startswith("sk-") for vs in params.values() for v in vs
        ):
            return await self._reject(Unauthorized("API keys are not accepted in the query string"))
        auth = headers.get("authorization", "")
        self.plaintext = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        for proto in offered:
            if proto.startswith(KEY_SUBPROTOCOL) and not self.plaintext:
                self.plaintext = proto[len(KEY_SUBPROTOCOL) :]
        if not self.plaintext:
            return await self._reject(Unauthorized("missing bearer key"))
        self.intent = (params.get("intent") or [""])[0]
        if "openai-beta" in headers:
            self.extra_headers["OpenAI-Beta"] = headers["openai-beta"]
        self.model_name = (params.get("model") or [""])[0]
        if self.model_name:
            await self._open(with_model=True)
            return
        # No model yet: the key is checked now, not when the first frame names one, and a socket
        # that names none in time is closed rather than held open for free.
        try:
            await threads.run(key_scope, plaintext=self.plaintext)
        except GatewayError as error:
            return await self._reject(error)
        self.deadline = asyncio.ensure_future(self._first_frame_deadline())

    async def _first_frame_deadline(self) -> None:
        wait_s = settings.GATEWAY_REALTIME_FIRST_FRAME_S
        await asyncio.sleep(wait_s)
        if self.session is None and self.finishing is None:
            await self._reject(BadRequest(f"no model named within {wait_s:g} s: send ?model= or a session.update"))

    async def _open(self, *, with_model: bool) -> bool:
        plan = services.session_plan(
            request_id=self.request_id, plaintext=self.plaintext, model=self.model_name, now=timezone.now()
        )
        try:
            answer = await admission.admit(plan)
        except GatewayError as error:  # the database unreachable
            await self._reject(error)
            return False
        if isinstance(answer, Refused):
            await self._reject(answer.error, answer)
            return False
        self.session = services.Session.of(answer)
        try:
            self.link, entry, attempts = await upstream_connect_routed(
                self.session.entry,
                intent=self.intent,
                with_model=with_model,
                extra_headers=self.extra_headers,
                max_size=settings.GATEWAY_REALTIME_MAX_FRAME_BYTES,
                open_timeout_s=min(settings.GATEWAY_UPSTREAM_TIMEOUT_S, 30.0),
            )
        except UpstreamConnectError as error:
            self.session.attempts = getattr(error, "attempts", 1)
            code = CloseCode.TRY_AGAIN_LATER if error.retry else CloseCode.INTERNAL_ERROR
            await self._finish(
                CloseReason.UPSTREAM_ERROR, Outcome.UPSTREAM_ERROR, code, error_code=UpstreamError.code, bill=False
            )
            return False
        self.session.entry, self.session.attempts = entry, attempts
        self.tasks = [asyncio.ensure_future(self._read_upstream()), asyncio.ensure_future(self._watch())]
        LIVE.add(self)
        observed.opened()
        return True

    async def _reject(self, error: GatewayError, refused: Refused | None = None) -> None:
        """A refused handshake, recorded; a refused key also counts against its client address,
        and one past the address's limit closes as rate limited without a record (a flood of bad
        keys would otherwise write a row each)."""
        if isinstance(error, Unauthorized) and (too_many := await auth_failed(self.address)) is not None:
            return await self._refuse_at_door(too_many)
        plan = services.session_plan(
            request_id=self.request_id, plaintext=self.plaintext, model=self.model_name, now=timezone.now()
        )
        await admission.refuse(plan, refused or error, status_code=close_code_for(error))
        await self._refuse_at_door(error)

    async def _refuse_at_door(self, error: GatewayError) -> None:
        """Closes the handshake with the refusal's code and reason (counted in the metrics)."""
        observed.refused(request_id=self.request_id, error=error)
        self.finishing = asyncio.get_running_loop().create_future()
        self.finishing.set_result(None)
        await self.close(code=close_code_for(error), reason=error.code)

    # --- client → upstream -----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.finishing is not None:
            return
        data = text_data if text_data is not None else bytes_data
        assert data is not None, "channels hands a frame's text or its bytes"
        if len(data) > settings.GATEWAY_REALTIME_MAX_FRAME_BYTES:
            if self.session is None:
                return await self._reject(RequestTooLarge("frame too large"))
            return await self._finish(
                CloseReason.CLIENT_ABORT, Outcome.CLIENT_CANCELLED, CloseCode.TOO_BIG, error_code=RequestTooLarge.code
            )
        event = None
        if text_data is not None:
            try:
                event = json.loads(text_data)
            except (ValueError, RecursionError):
                event = None
        event = event if isinstance(event, dict) else None
        if self.session is None and not await self._open_from(event):
            return
        if event is not None:
            data = await self._client_event(event, data)
            if data is None:
                return
        await self._send_upstream(data)

    async def _open_from(self, event: dict | None) -> bool:
        """No `?model=`: the first event must be a session.update naming it (the transcription form)."""
        if self.deadline is not None:
            self.deadline.cancel()
        self.model_name = (
            model_in_session_update(event) if event and event.get("type", "").endswith("session.update") else ""
        )
        if not self.model_name:
            await self._reject(BadRequest("name the model in ?model= or in the first session.update"))
            return False
        return await self._open(with_model=self.intent != "transcription")

    async def _client_event(self, event: dict, data: str | bytes) -> str | bytes | None:
        """Meters a client event; returns the frame to forward (rewritten model name) or None to drop it."""
        kind = event.get("type")
        if kind in SESSION_UPDATES:
            entry = self.opened.entry
            own = frozenset((self.model_name, entry.model_slug, entry.upstream_name))
            if (other := foreign_model(event, own)) is not None:
                await self._refuse_model(other, event)
                return None
            if rewrite_model(event, own, entry.upstream_name):
                data = json.dumps(event)
        if kind == "response.create" and self.opened.entry.limits and not await self._rate_allows(event):
            return None
        self.meter.client_event(event)
        if kind in BILLABLE and self.capped:
            # Billable work never starts while a cap is reached: check now, not at the next tick.
            # (An allocation without caps skips it; a cap set later bumps the generation, which the
            # watch notices within a tick and re-reads.)
            reason = await self._gate()
            if reason:
                await self._close_for(reason)
                return None
        if kind == "response.create":
            self._client_create_forwarded()
        return data

    async def _refuse_model(self, other: str, event: dict) -> None:
        """A session.update naming another model is not forwarded (the session bills its own model
        only); the client gets an error event and the session goes on."""
        message = f"this session serves '{self.model_name}'; a session.update may not name '{other[:100]}'"
        error = error_event(
            type_="invalid_request_error", code="model_mismatch", message=message, event_id=event.get("event_id")
        )
        await self.send(text_data=error)

    async def _send_upstream(self, data: str | bytes) -> None:
        try:
            await self.upstream.send(data)
        except UpstreamClosed as closed:
            await self._upstream_closed(closed)

    # --- upstream → client -----------------------------------------------------------------

    async def _read_upstream(self) -> None:
        try:
            link = self.upstream
            while True:
                data = await link.recv()
                kind = None
                if isinstance(data, str) and any(m in data for m in UPSTREAM_MARKERS):
                    kind = self._meter_upstream(data)
                if not self.client_gone:
                    await (self.send(text_data=data) if isinstance(data, str) else self.send(bytes_data=data))
                if kind == "response.created":
                    await self._response_started()
        except UpstreamClosed as closed:
            await self._upstream_closed(closed)
        except Exception:
            logger.exception("realtime session %s: relay failed", self.request_id)
            await self._finish(
                CloseReason.UPSTREAM_ERROR,
                Outcome.GATEWAY_ERROR,
                CloseCode.INTERNAL_ERROR,
                error_code=GatewayError.code,
                cut=True,
            )

    def _meter_upstream(self, data: str) -> str | None:
        """Meters an upstream event; returns its type."""
        try:
            event = json.loads(data)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        self.meter.upstream_event(event)
        kind = event.get("type")
        if kind == "response.done":
            self.response_done.set()
        return kind if isinstance(kind, str) else None

    async def _upstream_closed(self, closed: UpstreamClosed) -> None:
        clean = closed.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY)
        # Codes that must not be sent in a close frame become 1011.
        unsendable = (CloseCode.NO_STATUS, CloseCode.ABNORMAL, CloseCode.TLS_FAILED)
        code = closed.code if closed.code not in unsendable else CloseCode.INTERNAL_ERROR
        await self._finish(
            CloseReason.UPSTREAM_CLOSED if clean else CloseReason.UPSTREAM_ERROR,
            Outcome.SUCCESS if clean else Outcome.UPSTREAM_ERROR,
            code,
            reason=closed.reason if clean else UpstreamError.code,
            error_code="" if clean else UpstreamError.code,
            cut=True,
        )

    # --- client went away ------------------------------------------------------------------

    async def disconnect(self, code: int) -> None:
        self.client_gone = True
        if self.deadline is not None:
            self.deadline.cancel()
        if self.session is None or self.finishing is not None:
            return await self._wait_finished()
        in_progress = self.meter.response_in_progress
        if in_progress:
            # Cancel upstream and wait briefly for the final response.done so its usage is billed.
            self.response_done.clear()
            try:
                await self.upstream.send(json.dumps({"type": "response.cancel"}))
                await asyncio.wait_for(self.response_done.wait(), ABORT_WAIT_S)
            except (UpstreamClosed, TimeoutError):
                pass
        aborted = in_progress or code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY)
        await self._finish(
            CloseReason.CLIENT_ABORT if aborted else CloseReason.NORMAL,
            Outcome.CLIENT_CANCELLED if aborted else Outcome.SUCCESS,
            code,
        )

    async def _wait_finished(self) -> None:
        if self.finishing is not None:
            await asyncio.shield(self.finishing)

    # --- the one way out -------------------------------------------------------------------

    async def _finish(self, close_reason: CloseReason, outcome: Outcome, code: int, **kwargs: Any) -> None:
        if self.session is None:
            return
        if self.finishing is None:
            self.finishing = asyncio.ensure_future(self._do_finish(close_reason, outcome, code, **kwargs))
        await asyncio.shield(self.finishing)

    async def _do_finish(
        self,
        close_reason: CloseReason,
        outcome: Outcome,
        code: int,
        *,
        reason: str = "",
        error_code: str = "",
        cut: bool = False,
        bill: bool = True,
    ) -> None:
        live = self in LIVE
        LIVE.discard(self)
        for task in self.tasks:
            task.cancel()
        if self.link is not None:
            try:
                await asyncio.wait_for(self.link.close(), 2.0)
            except Exception:  # noqa: BLE001 - the upstream is going away either way
                logger.debug("upstream close failed for %s", self.request_id)
        session = self.opened  # _finish returns early when no session was opened
        usage = self.meter.usage(session.price, cut=cut) if bill else Usage()
        # The session's one bill: its record, its counters and its call line carry its cost.
        billed = billing.bill(price=session.price, usage=usage)
        try:
            await admission.settle(
                session.admitted,
                outcome=outcome,
                status_code=code,
                usage=usage,
                error_code=error_code,
                entry=session.entry,
                attempts=session.attempts,
                close_reason=close_reason,
                admission=session.admission,
                billed=billed,
            )
        except Exception:
            # The reservation (with its context) stays; the sweeper bills the session later.
            logger.exception("realtime session %s: settlement failed; left to the sweeper", self.request_id)
        observed.finished(
            session,
            usage=usage,
            cost=billed.cost,
            outcome=outcome,
            reason=close_reason,
            code=code,
            error=error_code,
            live=live,
        )
        if not self.client_gone:
            await self.close(code=code, reason=reason or close_reason)
