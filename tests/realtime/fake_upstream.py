"""A local fake OpenAI/Azure realtime upstream: a real `websockets` server on a loopback port,
run in its own thread and event loop so both in-process (WebsocketCommunicator) and daphne
subprocess tests can reach it.

Behaviour by the model (OpenAI `?model=`, Azure `deployment=` or GA `?model=`):
- default: `session.created`; `session.update` → `session.updated`; `response.create` →
  `response.created`, `response.text.delta`, `response.done` with USAGE; transcription sessions
  (`intent=transcription`) get `...input_audio_transcription.completed` with token usage per commit;
  binary frames are echoed back; `{"type": "test.close"}` makes it close with 1000 "bye".
- `slow`: `response.create` sends `response.created` + one delta and waits for `response.cancel`,
  then answers `response.done` (status cancelled) with CANCELLED_USAGE.
- `huge`: `response.create` also sends a 4 KiB delta (over a small frame bound).
- `drop`: `response.create` sends `response.created` + one delta, then drops the TCP connection.
- `busy`: the handshake is refused with HTTP 429; `broken`: refused with HTTP 500.
- `vad`: like the default, and each `input_audio_buffer.commit` also starts a response by itself
  (as server VAD does at the end of a turn): `response.created`, a delta, `response.done`.
"""

import asyncio
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve

USAGE = {
    "total_tokens": 150,
    "input_tokens": 100,
    "output_tokens": 50,
    "input_token_details": {"text_tokens": 40, "audio_tokens": 40, "cached_tokens": 20},
    "output_token_details": {"text_tokens": 20, "audio_tokens": 30},
}
CANCELLED_USAGE = {"total_tokens": 110, "input_tokens": 100, "output_tokens": 10}
TRANSCRIPTION_USAGE = {"type": "tokens", "input_tokens": 30, "output_tokens": 5, "total_tokens": 35}


@dataclass
class Handshake:
    path: str
    query: dict
    headers: dict


@dataclass
class FakeRealtimeUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    handshakes: list = field(default_factory=list)
    received: list = field(default_factory=list)  # every frame the fake got, raw
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def azure_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- server ----------------------------------------------------------------------------

    def start(self) -> "FakeRealtimeUpstream":
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "fake upstream did not start"
        return self

    def _run(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self.stop_event = asyncio.Event()
        async with serve(
            self._handler, self.host, 0, process_request=self._process_request, max_size=None, compression=None
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self.stop_event.wait()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(5)

    def _process_request(self, connection, request):
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.handshakes.append(Handshake(parts.path, query, {k.lower(): v for k, v in request.headers.raw_items()}))
        model = query.get("model") or query.get("deployment") or ""
        if model == "busy":
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "slow down\n")
        if model == "broken":
            return connection.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "broken\n")
        return None

    # --- protocol --------------------------------------------------------------------------

    async def _handler(self, ws) -> None:
        handshake = self.handshakes[-1]
        model = handshake.query.get("model") or handshake.query.get("deployment") or ""
        transcription = handshake.query.get("intent") == "transcription"
        seq = 0

        async def emit(kind, **fields):
            nonlocal seq
            seq += 1
            await ws.send(json.dumps({"type": kind, "event_id": f"evt_{seq}", **fields}))

        await emit("session.created", session={"id": "sess_1", "model": model})
        turns = 0
        async for frame in ws:
            self.received.append(frame)
            if isinstance(frame, bytes):
                await ws.send(frame)
                continue
            try:
                event = json.loads(frame)
            except (ValueError, RecursionError):  # a frame no parser reads: answered, not fatal
                await emit("error", error={"type": "invalid_request_error", "message": "unreadable event"})
                continue
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "session.update":
                await emit("session.updated", session=event.get("session"))
            elif kind == "input_audio_buffer.commit":
                await emit("input_audio_buffer.committed", item_id="item_in")
                if transcription:
                    await emit(
                        "conversation.item.input_audio_transcription.completed",
                        item_id="item_in",
                        transcript="hello",
                        usage=TRANSCRIPTION_USAGE,
                    )
                elif model == "vad":
                    turns += 1
                    await emit("response.created", response={"id": f"resp_{turns}", "status": "in_progress"})
                    await emit("response.text.delta", response_id=f"resp_{turns}", delta="Heard you.")
                    await emit("response.done", response={"id": f"resp_{turns}", "status": "completed", "usage": USAGE})
            elif kind == "response.create":
                turns += 1
                rid = f"resp_{turns}"
                await emit("response.created", response={"id": rid, "status": "in_progress"})
                await emit("response.text.delta", response_id=rid, delta="Hello there, how are you?")
                if model == "huge":
                    await emit("response.text.delta", response_id=rid, delta="x" * 4096)
                if model == "drop":
                    ws.transport.abort()
                    return
                if model == "slow":
                    await self._wait_cancel(ws)
                    await emit("response.done", response={"id": rid, "status": "cancelled", "usage": CANCELLED_USAGE})
                    continue
                await emit("response.done", response={"id": rid, "status": "completed", "usage": USAGE})
            elif kind == "test.close":
                await ws.close(1000, "bye")
                return

    async def _wait_cancel(self, ws) -> None:
        async for frame in ws:
            self.received.append(frame)
            if isinstance(frame, str) and json.loads(frame).get("type") == "response.cancel":
                return
