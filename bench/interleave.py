#!/usr/bin/env python3
"""Latency at c = 1 of the two gateways of a held bench world (`bench/run.py --tree OTHER --cases 0ms
--hold 3000 > world.json`: this tree's `gateway` and the other's `base`; with `--servers` also
`thin_daphne` and `ledger_floor` on the 0 ms upstream) and of the fake upstream alone, call by call
interleaved (each round in a shuffled order), so that the machine's load falls on all alike: p25 /
p50 / p75 per target, the added p50 (minus the upstream's), and the median of the per-call
differences (gateway minus each other target). compare.py's rounds move by ±1 ms at c = 1 on a
loaded machine; interleaved calls show a difference of ~0.1 ms.

  bench/interleave.py world.json [--calls 4000] [--warmup 100] [--seed 0]

Rows are printed and written to bench/results/raw/interleave-<time>.jsonl.
"""

import argparse
import http.client
import json
import os
import random
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

from run import RESULTS

MODEL = "bench0/gpt-4o-mini"
UPSTREAM_MODEL = "gpt-4o-mini"
DIRECT_KEY = "sk-direct"  # the fake upstream's (../shared/bench/fake_upstream.py)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="of the rounds' orders")
    args = ap.parse_args()
    world = json.loads(Path(args.world).read_text())
    prompt = " ".join(f"word{i}" for i in range(1, 17))  # the harness's chat.lua body
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
    direct = urlsplit(world["upstream"]["0"])
    targets = {  # name: (connection, key, body)
        name: (http.client.HTTPConnection("127.0.0.1", world["gateways"][name]["port"]), world["key"], body)
        for name in ("gateway", "base")
        if name in world["gateways"]
    }
    for name in ("thin_daphne", "ledger_floor"):  # the thin app's key and its upstream's model name
        if "0" in world.get(name, {}):
            connection = http.client.HTTPConnection("127.0.0.1", world[name]["0"]["port"])
            targets[name] = (connection, "sk-thin", body.replace(MODEL, UPSTREAM_MODEL))
    targets["direct"] = (http.client.HTTPConnection(direct.hostname, direct.port), DIRECT_KEY, body)

    def call(name: str) -> float:
        conn, key, sent = targets[name]
        started = time.perf_counter()
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=sent,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{name} answered {response.status}")
        return (time.perf_counter() - started) * 1000

    for name in targets:
        for _ in range(args.warmup):
            call(name)
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    loads = []
    order = list(targets)
    shuffled, last = random.Random(args.seed), None
    for n in range(args.calls):
        # Each round in an order of its own, never starting with the target that ended the last
        # one: a target called twice in a row finds its worker and its connections warm (the
        # order merely reversed each round gave the first target that twice in every two rounds,
        # ~0.27 ms lower at c = 1 between two copies of one tree).
        round_order = order[:]
        shuffled.shuffle(round_order)
        if round_order[0] == last:
            round_order.append(round_order.pop(0))
        last = round_order[-1]
        for name in round_order:
            latencies[name].append(call(name))
        if n % 200 == 0:
            loads.append(os.getloadavg()[0])
    direct_q = statistics.quantiles(latencies["direct"], n=100)
    rows = []
    for name in order[:-1]:
        q = statistics.quantiles(latencies[name], n=100)
        rows.append(
            {
                "target": f"interleave:{name}",
                "case": "0ms",
                "concurrency": 1,
                "calls": args.calls,
                "p25_ms": round(q[24], 3),
                "gateway_p50_ms": round(q[49], 3),
                "p75_ms": round(q[74], 3),
                "direct_p50_ms": round(direct_q[49], 3),
                "added_p50_ms": round(q[49] - direct_q[49], 3),
                "added_p99_ms": round(q[98] - direct_q[98], 3),
                "loadavg1": round(statistics.median(loads), 2),
            }
        )
    for other in order[1:-1]:
        paired = [a - b for a, b in zip(latencies["gateway"], latencies[other], strict=True)]
        rows.append(
            {
                "paired": f"gateway - {other}",
                "median_ms": round(statistics.median(paired), 3),
                "gateway_lower_share": round(sum(d < 0 for d in paired) / len(paired), 3),
                "calls": args.calls,
            }
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"interleave-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with out.open("w") as f:
        for row in rows:
            print(json.dumps(row))
            f.write(json.dumps(row) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
