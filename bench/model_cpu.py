#!/usr/bin/env python3
"""CPU per call (user and system apart) and context switches per call (voluntary: the process slept,
its loop waiting in epoll; involuntary: it was runnable and another process took its core) of a
held world's processes, `target:model` pairs in rounds that alternate the order: what the same
worker does per call with a 50 ms upstream against a 0 ms one (`gateway:bench50/gpt-4o-mini`
against `gateway:bench0/gpt-4o-mini`), or the thin pass-through's (`thin:50` against `thin:0`, its
own fake upstream per latency). The load is the shared harness' load.py (wrk for JSON calls), as
compare.py runs it. A held world: `bench/run.py [--tree OTHER] --cases 0ms,50ms --hold 3000 >
world.json`; targets are its `gateways` (the serve worker is counted) and `thin`.

  bench/model_cpu.py world.json gateway:bench0/gpt-4o-mini gateway:bench50/gpt-4o-mini -c 64 --rounds 4
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from run import BENCH_PY, HARNESS, RESULTS

TICK = os.sysconf("SC_CLK_TCK")


def process(world: dict, pair: str) -> tuple[int, int, str, str]:
    """(port, pid to count, key, model) of `target:model`."""
    target, model = pair.split(":", 1)
    if target == "thin":
        found = world["thin"][model]
        return found["port"], found["pid"], "sk-thin", "gpt-4o-mini"
    found = world["gateways"][target]
    worker = int(Path(f"/proc/{found['pid']}/task/{found['pid']}/children").read_text().split()[0])
    return found["port"], worker, world["key"], model


def counters(pid: int) -> tuple[float, float, int, int]:
    """User s, system s, voluntary and involuntary switches, summed over the process' threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                involuntary += int(line.split()[1])
    return int(fields[11]) / TICK, int(fields[12]) / TICK, voluntary, involuntary


def one_round(world: dict, pair: str, concurrency: int, duration: float) -> dict:
    port, pid, key, model = process(world, pair)
    cmd = [BENCH_PY, str(HARNESS / "load.py"), "--url", f"http://127.0.0.1:{port}", "--key", key]
    cmd += ["--model", model, "-c", str(concurrency), "-d", str(duration)]
    before = counters(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    after = counters(pid)
    result = json.loads(out)
    calls = max(1, result.get("ok", result["requests"]) - result.get("non2xx", 0))
    user, system, voluntary, involuntary = (b - a for a, b in zip(before, after, strict=True))
    return {
        "calls": calls,
        "calls_s": round(calls / duration, 1),
        "p50_ms": result.get("p50_ms"),
        "user_ms": user * 1000 / calls,
        "sys_ms": system * 1000 / calls,
        "voluntary": voluntary / calls,
        "involuntary": involuntary / calls,
        "loadavg1": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("pairs", nargs="+", help="target:model (a gateway of the world, or thin:0 / thin:50)")
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=5)
    args = ap.parse_args()
    world = json.loads(Path(args.world).read_text())
    rounds: dict[str, list[dict]] = {pair: [] for pair in args.pairs}
    for index in range(args.rounds):
        for pair in args.pairs if index % 2 == 0 else args.pairs[::-1]:
            time.sleep(1)
            row = one_round(world, pair, args.concurrency, args.duration)
            rounds[pair].append(row)
            print(f"round {index} {pair}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "calls"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"model_cpu-{time.strftime('%Y%m%d-%H%M%S')}.jsonl").open("w") as raw:
        for pair, rows in rounds.items():
            target, model = pair.split(":", 1)
            summary = {"target": target, "case": f"cpu and switches {model}", "concurrency": args.concurrency}
            summary |= {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0] if k != "calls"}
            summary |= {  # the columns bench/summarize.py reads
                "cpu_ms_per_call_median": round(statistics.median(r["user_ms"] + r["sys_ms"] for r in rows), 4),
                "calls_per_s_median": summary["calls_s"],
                "rounds": args.rounds,
            }
            print(json.dumps(summary))
            raw.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
