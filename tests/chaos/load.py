"""The fault suite's clients: a closed loop of concurrent calls of every kind a gateway sees,
each with its own X-Request-Id, spread over the gateway processes, and what each client saw."""

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import aiohttp

# kind -> (model slug, stream, weight). Slugs are `chaos/<upstream name>`.
KINDS = {
    "plain": ("chaos/chaos-ok", False, 30),
    "stream": ("chaos/chaos-ok", True, 24),
    "abandoned_stream": ("chaos/chaos-ok", True, 8),
    "abandoned_plain": ("chaos/chaos-ok", False, 7),
    "capped": ("chaos/chaos-capped", False, 10),
    "upstream_500": ("chaos/fake-error-500", False, 6),
    "drop_stream": ("chaos/fake-drop-3", True, 5),
    "drop_plain": ("chaos/fake-drop-3", False, 2),
    "garbage": ("chaos/fake-garbage", False, 2),
    "garbage_stream": ("chaos/fake-garbage", True, 2),
    "hang": ("chaos/fake-hang", False, 2),
    "slow": ("chaos/fake-sleep-1500", False, 0),  # never drawn: for the outage tests
}
MAX_TOKENS = 64


@dataclass
class Seen:
    """One call as its client saw it. `status` None: no HTTP answer (connection refused or cut)."""

    rid: str
    kind: str
    server: int
    status: int | None = None
    tokens: int | None = None  # the usage total the client received (complete answers only)
    error_code: str = ""
    retry_after: str | None = None
    read_whole: bool = False  # the answer's body was read (an abandoned call may stop after its head)
    transport_error: str = ""
    began: float = 0.0  # monotonic times of the call's start and end
    ended: float = 0.0


class Load:
    def __init__(self, *, key: str, ports: list[int], calls: int, concurrency: int, seed: int = 13):
        self.key, self.ports, self.calls, self.concurrency = key, ports, calls, concurrency
        self.random = random.Random(seed)
        self.seen: list[Seen] = []
        self.keep_going = asyncio.Event()  # set while the faults still need load after `calls`
        self._issued = 0

    def _next_kind(self) -> str:
        kinds = list(KINDS)
        return self.random.choices(kinds, weights=[KINDS[k][2] for k in kinds])[0]

    async def run(self) -> list[Seen]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))
        return self.seen

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while self._issued < self.calls or self.keep_going.is_set():
            n, self._issued = self._issued, self._issued + 1
            kind = self._next_kind()
            seen = Seen(rid=f"chaos-{uuid.uuid4().hex}", kind=kind, server=n % len(self.ports))
            self.seen.append(seen)
            if not await self.one(session, seen):
                await asyncio.sleep(0.1)  # its process is down: no busy loop of refused connections

    async def once(self, kind: str, server: int = 0, rid: str = "") -> Seen:
        """One call outside the loop, recorded with the others."""
        seen = Seen(rid=rid or f"chaos-{uuid.uuid4().hex}", kind=kind, server=server)
        self.seen.append(seen)
        async with aiohttp.ClientSession() as session:
            await self.one(session, seen)
        return seen

    async def one(self, session: aiohttp.ClientSession, seen: Seen) -> bool:
        """One call; False when it got no HTTP answer (refused, cut), which `seen` then names."""
        seen.began = time.monotonic()
        try:
            await self._call(session, seen)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            seen.transport_error = type(exc).__name__
            return False
        finally:
            seen.ended = time.monotonic()
        return True

    async def _call(self, session: aiohttp.ClientSession, seen: Seen) -> None:
        slug, stream, _ = KINDS[seen.kind]
        body = {
            "model": slug,
            "messages": [{"role": "user", "content": "hello " * self.random.randint(1, 40)}],
            "max_tokens": MAX_TOKENS,
        }
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        url = f"http://127.0.0.1:{self.ports[seen.server]}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {self.key}", "X-Request-Id": seen.rid}
        request = self._exchange(session, url, headers, body, seen)
        if seen.kind == "abandoned_plain":
            # The client gives up before the answer: the gateway still completes and bills the call.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request, self.random.uniform(0.01, 0.15))
            return
        await request

    async def _exchange(self, session, url, headers, body, seen: Seen) -> None:
        async with session.post(url, json=body, headers=headers) as response:
            seen.status = response.status
            seen.retry_after = response.headers.get("Retry-After")
            if response.content_type == "text/event-stream":
                await self._read_stream(response, seen)
                return
            raw = await response.read()
            seen.read_whole = True
            try:
                answer = json.loads(raw)
            except ValueError:
                return
            if response.status >= 400:
                seen.error_code = str((answer.get("error") or {}).get("code", ""))
            elif isinstance(answer.get("usage"), dict):
                seen.tokens = answer["usage"].get("total_tokens")

    async def _read_stream(self, response: aiohttp.ClientResponse, seen: Seen) -> None:
        usage, done = None, False
        async for line in response.content:
            if seen.kind == "abandoned_stream":
                response.close()  # leaves after the first line: the connection is cut under the stream
                return
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(data)
                if isinstance(event, dict) and event.get("usage"):
                    usage = event["usage"].get("total_tokens")
                if isinstance(event, dict) and event.get("error"):
                    seen.error_code = str(event["error"].get("code", ""))
        if done and usage is not None and not seen.error_code:
            seen.tokens = usage


def tally(seen: list[Seen]) -> dict:
    return {
        "calls": len(seen),
        "by_kind": dict(Counter(s.kind for s in seen)),
        "by_status": dict(Counter(str(s.status) for s in seen)),
        "no_answer": sum(s.status is None for s in seen),
    }
