#!/usr/bin/env python3
"""CPU per call (user + system, from /proc, so the kernel's share of each system call counts) of the
serve workers of a held bench world's two gateways (`bench/run.py --tree OTHER --cases 0ms --hold
1500 > world.json`: `gateway` and `base`), in rounds that alternate the order, at `concurrency`
keep-alive connections of Python's `http.client` (its own CPU is not in the figure): the median per
gateway and the rounds in which each was lower. Instruction counts (`bench/instructions_alternate.py`)
leave the kernel out; this does not, and moves with the machine's load (±5-10 % a round).

  bench/held_cpu.py world.json [--rounds 8] [--calls 1000] [--concurrency 1]
"""

import argparse
import http.client
import json
import os
import statistics
import threading
from pathlib import Path

MODEL = "bench0/gpt-4o-mini"
TICK = os.sysconf("SC_CLK_TCK")


def worker_of(supervisor: int) -> int:
    return int(Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()[0])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def drive(port: int, key: str, body: str, calls: int, concurrency: int) -> None:
    def one(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for _ in range(count):
            conn.request("POST", "/v1/chat/completions", body, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status

    threads = [threading.Thread(target=one, args=(calls // concurrency,)) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    world = json.loads(Path(args.world).read_text())
    prompt = " ".join(f"word{i}" for i in range(1, 17))  # the harness's chat.lua body
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
    names = ["gateway", "base"]
    per_call: dict[str, list[float]] = {name: [] for name in names}
    for n in range(args.rounds):
        for name in names if n % 2 == 0 else names[::-1]:
            gateway = world["gateways"][name]
            worker = worker_of(gateway["pid"])
            drive(gateway["port"], world["key"], body, 40, min(args.concurrency, 40))  # warm-up
            before = cpu_s(worker)
            drive(gateway["port"], world["key"], body, args.calls, args.concurrency)
            per_call[name].append((cpu_s(worker) - before) * 1000 / args.calls)
        print(f"round {n}: " + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in per_call.items()), flush=True)
    lower = sum(g < b for g, b in zip(per_call["gateway"], per_call["base"], strict=True))
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "calls": args.calls,
                "rounds": args.rounds,
                **{f"{k}_cpu_ms_median": round(statistics.median(v), 3) for k, v in per_call.items()},
                "gateway_lower_rounds": lower,
                "loadavg1": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
