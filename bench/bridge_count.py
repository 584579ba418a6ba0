#!/usr/bin/env python3
"""Instructions per request of daphne's bridge and Twisted's HTTP alone, patch by patch: N keep-alive
requests (a /v1 chat call's head and a 150-byte body, a 600-byte JSON answer with its length) fed to
one daphne HTTP channel on an in-memory transport, a trivial ASGI application answering each, on
uvloop with Twisted's asyncio reactor as the worker runs them. No socket, no upstream, no Django:
what is left is the server's own Python per request, which the whole-process counts
(instructions_alternate.py) carry inside ~1.4-4 M instructions of everything else.

The server patches that change how daphne and Twisted serve HTTP are applied as bench/thin_daphne.py
applies them (not the edge nor the drain), less those named in --without. Run it under callgrind
twice, N and 0 requests, and subtract (start-up cancels out):

  for n in 0 3000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/bc-$n.out \\
      .venv/bin/python bench/bridge_count.py $n [--without idle_timer_kept,...]; done
  # then (totals of the two files) / 3000

or `bench/bridge_count.py 3000 --callgrind [--without ...]`, which does both and prints the figure
(`--turn N`: the reactor runs its timed calls every N requests, as daphne's once-a-second checkers
make it do, dropping the timers cancelled meanwhile; without it they pile up and inflate the count);
BRIDGE_TREE=<another checkout> counts that checkout's server patches (its gateway_project) instead.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"model":"bench0/gpt-4o-mini","messages":[{"role":"user","content":"' + b"word " * 16 + b'"}]}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer sk-thin-0123456789abcdef0123456789abcdef\r\nContent-Length: %d\r\n\r\n%s"
    % (len(BODY), BODY)
)
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"content":"' + b"x" * 480 + b'"}}]}'
GATEWAY_ONLY = {"head_refusal", "drain_on_shutdown"}


async def application(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


async def serve(count: int, turn: int) -> int:
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    server = Server(application=application, endpoints=["tcp:port=0:interface=127.0.0.1"])  # never run
    server.connections = {}
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8000), peerAddress=IPv4Address("TCP", "127.0.0.1", 4321)
    )
    channel = HTTPFactory(server).buildProtocol(None)
    channel.makeConnection(transport)
    from twisted.internet import reactor

    answered = 0
    for index in range(count):
        if index % turn == turn - 1:  # the reactor's timed calls (daphne's checkers) come due
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
        channel.dataReceived(REQUEST)
        while not transport.value().endswith(ANSWER):
            await asyncio.sleep(0)
        transport.clear()
        answered += 1
    channel.connectionLost(None)
    return answered


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("count", type=int)
    ap.add_argument("--without", default="", help="comma-separated server patches not to apply")
    ap.add_argument(
        "--turn",
        type=int,
        default=500,
        help="requests between two runs of the reactor's timed calls (daphne's checkers run once a second: "
        "500 is a second at 500 calls/s), where it drops the timers cancelled meanwhile",
    )
    ap.add_argument("--callgrind", action="store_true", help="run itself under callgrind at 0 and COUNT")
    args = ap.parse_args()
    if args.callgrind:
        totals = []
        for count in (0, args.count):
            out = Path(tempfile.mkstemp(prefix="bridge-count-")[1])
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
            command += [__file__, str(count), "--without", args.without, "--turn", str(args.turn)]
            subprocess.run(command, check=True, capture_output=True)
            totals.append(int(re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.M).group(1)))
            out.unlink()
        tree = os.environ.get("BRIDGE_TREE", str(ROOT))
        per = (totals[1] - totals[0]) / args.count
        print(f"{tree} without [{args.without}]: {per:,.0f} instructions per request", flush=True)
        return
    sys.path.insert(0, os.environ.get("BRIDGE_TREE", str(ROOT)))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    import daphne.server  # noqa: F401 - installs Twisted's asyncio reactor on this loop

    from gateway_project import server_patches

    without = set(filter(None, args.without.split(","))) | GATEWAY_ONLY
    unknown = without - {patch.name for patch in server_patches.PATCHES}
    if unknown:
        raise SystemExit(f"no such server patch: {', '.join(sorted(unknown))}")
    server_patches.check(targets=True)
    for patch in server_patches.PATCHES:
        if patch.apply is not None and patch.name not in without:
            patch.apply()
    from twisted.internet import reactor

    loop = reactor._asyncioEventloop  # type: ignore[attr-defined]  # the loop daphne gave the reactor
    asyncio.set_event_loop(loop)
    assert loop.run_until_complete(serve(args.count, args.turn)) == args.count


if __name__ == "__main__":
    main()
