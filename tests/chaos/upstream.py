"""The fault suite's upstream: an OpenAI-compatible chat server in a process of its own that keeps
a ledger of every call it received, by request id (the gateway forwards `X-Request-Id`), with its
upstream model name and the tokens it served. The suite compares that ledger with the gateway's
call records.

Usage varies per call (a pure function of the request id), so a record that copied another call's
usage, or an estimate where the upstream reported usage, shows as a token difference.

Models (the upstream name the gateway sends):
- anything else: a normal answer after --latency-ms (a stream: CHUNKS deltas, then the usage chunk)
- fake-error-NNN: status NNN with an OpenAI error body, nothing served
- fake-drop-N: a stream of N deltas, then the connection is cut (non-stream: cut before answering)
- fake-garbage: an unparsable body (stream: one delta, then an unparsable event, then [DONE])
- fake-hang: never answers
- fake-sleep-MS: a normal answer after MS milliseconds

`served` is the usage total once the whole answer (usage included) was written, else null.

With --ledger FILE the ledger is also appended to FILE (a JSON line per call received and per
answer served) and read back when the process starts, so a killed and restarted upstream still
reports every call it received before.

    python -m tests.chaos.upstream --port N [--latency-ms 80] [--ledger FILE]
    GET /_chaos/calls -> [{"rid", "model", "stream", "served", "n"}]
"""

import argparse
import asyncio
import hashlib
import json
from pathlib import Path

from aiohttp import web

CHUNKS = 6


def usage_for(rid: str) -> dict:
    digest = hashlib.sha256(rid.encode()).digest()
    prompt, completion = 8 + digest[0] % 40, 3 + digest[1] % 60
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


class Upstream:
    def __init__(self, latency_s: float, ledger: Path | None = None):
        self.latency_s = latency_s
        self.calls: dict[str, dict] = {}
        self.ledger_file = ledger
        if ledger is not None and ledger.exists():
            for line in ledger.read_text().splitlines():
                self._replay(json.loads(line))

    def _replay(self, line: dict) -> None:
        entry = self.calls.setdefault(line["rid"], {**line, "served": None, "n": 0})
        if "served" in line:
            entry["served"] = line["served"]
        else:
            entry["n"] += 1

    def _write(self, line: dict) -> None:
        if self.ledger_file is not None:
            with self.ledger_file.open("a") as sink:
                sink.write(json.dumps(line) + "\n")

    def received(self, rid: str, model: str, stream: bool) -> dict:
        entry = self.calls.setdefault(rid, {"rid": rid, "model": model, "stream": stream, "served": None, "n": 0})
        entry["n"] += 1
        self._write({"rid": rid, "model": model, "stream": stream})
        return entry

    def served(self, entry: dict, total: int) -> None:
        entry["served"] = total
        self._write({"rid": entry["rid"], "served": total})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid = request.headers.get("X-Request-Id", "")
        model, stream = body.get("model", ""), bool(body.get("stream"))
        entry = self.received(rid, model, stream)
        if model.startswith("fake-error-"):
            error = {"message": "injected failure", "type": "server_error", "code": None, "param": None}
            return web.json_response({"error": error}, status=int(model.rsplit("-", 1)[1]))
        if model == "fake-hang":
            await asyncio.sleep(3600)
        delay = int(model.rsplit("-", 1)[1]) / 1000 if model.startswith("fake-sleep-") else self.latency_s
        await asyncio.sleep(delay)
        usage = usage_for(rid)
        if stream:
            return await self.stream(request, entry, model, usage)
        if model.startswith("fake-drop-"):
            request.transport.close()
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if model == "fake-garbage":
            await response.write(b"{not json")
            await response.write_eof()
            return response
        message = {"role": "assistant", "content": "ok " * usage["completion_tokens"]}
        answer = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
        await response.write(json.dumps(answer).encode())
        await response.write_eof()
        self.served(entry, usage["total_tokens"])
        return response

    async def stream(self, request, entry, model, usage) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": f"chatcmpl-{entry['rid']}", "object": "chat.completion.chunk", "created": 1, "model": model}

        def chunk(delta, finish=None):
            return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        await response.write(chunk({"role": "assistant", "content": ""}))
        deltas = int(model.rsplit("-", 1)[1]) if model.startswith("fake-drop-") else CHUNKS
        for n in range(1 if model == "fake-garbage" else deltas):
            await asyncio.sleep(0.01)
            await response.write(chunk({"content": f"w{n} "}))
        if model.startswith("fake-drop-"):
            request.transport.close()
            return response
        if model == "fake-garbage":
            await response.write(b"data: {not json\n\n")
        else:
            await response.write(chunk({}, "stop"))
            await response.write(_sse({**base, "choices": [], "usage": usage}))
        await response.write(_sse(b"[DONE]"))
        await response.write_eof()
        if model != "fake-garbage":
            self.served(entry, usage["total_tokens"])
        return response

    async def ledger(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.calls.values()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=80)
    parser.add_argument("--ledger", type=Path)
    args = parser.parse_args()
    upstream = Upstream(args.latency_ms / 1000, args.ledger)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat)
    app.router.add_get("/_chaos/calls", upstream.ledger)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=lambda *_: print("ready", flush=True))


if __name__ == "__main__":
    main()
