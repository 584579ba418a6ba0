#!/usr/bin/env python3
"""CPU per call (a realistic stream by default) of each target of a held bench world (`bench/run.py --tree OTHER
--hold 3000 > world.json`), in alternating rounds (order rotated each round), medians per target.
The targets are this tree's gateway, the other tree's (`base`) and the thin aiohttp pass-through
(with `run.py --servers`, also `gateway_uvicorn` and `thin_daphne`: the same two under the other server),
all against the realistic-stream upstream (100 chunks 10 ms apart, 50 ms first token).

  bench/stream_alternate.py world.json [--levels 16,64] [--rounds 4] [--duration 6] [--case realstream|0ms|50ms]

Rows (one per target and level) are printed and written to bench/results/raw/stream-<time>.jsonl.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run import BENCH_PY, HARNESS, RESULTS


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (serve's worker), from /proc."""
    total = 0.0
    for p in [pid, *map(int, subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("--levels", default="16,64")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--case", choices=["realstream", "0ms", "50ms"], default="realstream", help="0ms, 50ms: JSON")
    args = ap.parse_args()
    upstream = {"realstream": "real", "0ms": "0", "50ms": "50"}[args.case]
    model = {"realstream": "benchreal", "0ms": "bench0", "50ms": "bench50"}[args.case] + "/gpt-4o-mini"
    world = json.loads(Path(args.world).read_text())
    targets = {
        name: (f"http://127.0.0.1:{g['port']}", world["key"], model, g["pid"]) for name, g in world["gateways"].items()
    }
    thin = world["thin"][upstream]
    targets["thin"] = (f"http://127.0.0.1:{thin['port']}", "sk-thin", "gpt-4o-mini", thin["pid"])
    if "thin_daphne" in world:  # run.py --servers: thin_proxy under gateway_project.serve
        floor = world["thin_daphne"][upstream]
        targets["thin_daphne"] = (f"http://127.0.0.1:{floor['port']}", "sk-thin", "gpt-4o-mini", floor["pid"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for level in [int(c) for c in args.levels.split(",")]:
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        names = list(targets)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                url, key, model, pid = targets[name]
                cmd = [BENCH_PY, str(HARNESS / "load.py"), "--url", url, "--key", key, "--model", model]
                cmd += ["-c", str(level), "-d", str(args.duration)]
                cmd += ["--stream"] if args.case == "realstream" else []
                time.sleep(1)
                before = cpu_s(pid)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                used = cpu_s(pid) - before
                row = json.loads(out.strip().splitlines()[-1])
                row["cpu_ms_per_call"] = 1000 * used / max(1, row["ok"] - row.get("non2xx", 0))
                row["loadavg1"] = float(Path("/proc/loadavg").read_text().split()[0])
                runs[name].append(row)
        for name, rows in runs.items():
            summary = {
                "run": f"stream-{stamp}",
                "target": name,
                "case": args.case,
                "stream": args.case == "realstream",
                "concurrency": level,
                "rounds": args.rounds,
                "cpu_ms_per_call_median": round(statistics.median(r["cpu_ms_per_call"] for r in rows), 3),
                "cpu_ms_per_call_all": [round(r["cpu_ms_per_call"], 3) for r in rows],
                "calls_per_s_median": statistics.median(r["rps"] for r in rows),
                "p50_ms_median": statistics.median(r["p50_ms"] for r in rows),
                "ttft_p50_ms_median": statistics.median(r.get("ttft_p50_ms") or 0 for r in rows),
                "errors": sum(r["errors"] for r in rows),
                "loadavg1": statistics.median(r["loadavg1"] for r in rows),
            }
            print(json.dumps(summary), flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            with open(RESULTS / f"stream-{stamp}.jsonl", "a") as fh:
                fh.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    sys.exit(main())
