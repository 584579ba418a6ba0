#!/usr/bin/env python3
"""Measuring only, in a tree with a patch of bench/patches/ applied: the 50 ms ratio and added p50
of a held world's gateways and of this tree served with start-up switches, rounds alternated
(`--variants`: answer_first, async_commit, both with answer_first_async_commit.patch; nocounter,
norows with lease_ceiling.patch). A world held with `run.py --servers` adds `thin_daphne` (the
thin pass-through under the gateway's server) as a target; `--skip` leaves out held gateways
(`gateway_uvicorn` by default).

The world: `bench/run.py --tree <main> --cases 50ms,0ms --hold 5000 > world.json` (targets
`gateway`, this tree with no switch, and `base`, main). This starts, beside them, this tree's
`gateway.serve --workers 1` once per variant with the world's own environment (read from the held
gateway's /proc/<pid>/environ) plus the variant's switches, then for each level and round runs
`load.py` (wrk, as bench/run.py's compare.py does) against the 50 ms upstream directly and every
target, order rotated each round: the ratio is a round's rps over that round's direct rps, the
added p50 its p50 minus the direct p50 (medians of rounds, as compare.py reports them).

  bench/variants_alternate.py world.json --levels 64,16,1 --rounds 4 --duration 6"""

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from run import BENCH_PY, HARNESS, RESULTS, ROOT, cpu_s, free_port, stop, wait_http

VARIANTS = {
    "answer_first": {"GATEWAY_TRY_ANSWER_FIRST": "1"},
    "async_commit": {"GATEWAY_TRY_ASYNC_COMMIT": "1"},
    "both": {"GATEWAY_TRY_ANSWER_FIRST": "1", "GATEWAY_TRY_ASYNC_COMMIT": "1"},
    # bench/patches/lease_ceiling.patch: the per-call statements without the counter's row (their
    # admissions sent as soon as a connection is free, or `_serial`: one statement of the counter
    # in the database at a time, as main holds them), and without the rollups too
    "nocounter": {"GATEWAY_TRY_NOCOUNTER": "1"},
    "nocounter_serial": {"GATEWAY_TRY_NOCOUNTER": "1", "GATEWAY_TRY_SERIAL": "1"},
    "norows": {"GATEWAY_TRY_NOCOUNTER": "1", "GATEWAY_TRY_NOROWS": "1"},
    "norows_serial": {"GATEWAY_TRY_NOCOUNTER": "1", "GATEWAY_TRY_NOROWS": "1", "GATEWAY_TRY_SERIAL": "1"},
}
SWITCHES = {name for switches in VARIANTS.values() for name in switches}


def environ_of(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a serve supervisor and its workers."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sum(cpu_s(p) for p in [pid, *map(int, found)])


def load(url: str, key: str, model: str, concurrency: int, duration: float, pid: int | None = None) -> dict:
    c0 = tree_cpu(pid) if pid else 0.0
    cmd = [BENCH_PY, str(HARNESS / "load.py"), "--url", url, "--key", key, "--model", model]
    cmd += ["-c", str(concurrency), "-d", str(duration)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    if pid:
        row["cpu_ms_per_call"] = (tree_cpu(pid) - c0) * 1000 / max(1, row["requests"])
    row["loadavg1"] = float(Path("/proc/loadavg").read_text().split()[0])
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("--levels", default="64,16,1")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--variants", default="answer_first,async_commit,both")
    ap.add_argument("--skip", default="gateway_uvicorn", help="the held world's gateways left out")
    args = ap.parse_args()
    world = json.loads(Path(args.world).read_text())
    env = environ_of(world["gateways"]["gateway"]["pid"])
    for name in SWITCHES:
        env.pop(name, None)
    held = {name: g for name, g in world["gateways"].items() if name not in args.skip.split(",")}
    procs, targets = [], {name: f"http://127.0.0.1:{g['port']}" for name, g in held.items()}
    pids = {name: g["pid"] for name, g in held.items()}
    keys = dict.fromkeys(targets, world["key"])
    models = dict.fromkeys(targets, "bench50/gpt-4o-mini")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        for name in args.variants.split(","):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [str(ROOT / ".venv" / "bin" / "python"), "-m", "gateway_project.serve", "--workers", "1"]
                    + ["-v", "0", "-b", "127.0.0.1", "-p", str(port), "gateway_project.asgi:application"],
                    cwd=ROOT,
                    env={**env, **VARIANTS[name]},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            targets[name] = f"http://127.0.0.1:{port}"
            pids[name] = procs[-1].pid
            keys[name], models[name] = world["key"], "bench50/gpt-4o-mini"
        if "thin_daphne" in world:  # run.py --servers: the thin pass-through under the gateway's server
            floor = world["thin_daphne"]["50"]
            targets["thin_daphne"], pids["thin_daphne"] = f"http://127.0.0.1:{floor['port']}", floor["pid"]
            keys["thin_daphne"], models["thin_daphne"] = "sk-thin", "gpt-4o-mini"
        for url in targets.values():
            wait_http(int(url.rsplit(":", 1)[1]))
        names = ["direct", *targets]
        urls = {"direct": world["upstream"]["50"], **targets}
        keys["direct"], models["direct"] = "sk-direct", "gpt-4o-mini"
        RESULTS.mkdir(parents=True, exist_ok=True)
        for level in (int(x) for x in args.levels.split(",")):
            for name in names:  # warm-up: the loop's connections, prepared statements
                load(urls[name], keys[name], models[name], level, 2)
            rows: dict[str, list[dict]] = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                order = order if r % 2 == 0 else order[::-1]
                for name in order:
                    time.sleep(0.5)
                    row = load(urls[name], keys[name], models[name], level, args.duration, pids.get(name))
                    rows[name].append(row)
            for name in names:
                d, g = rows["direct"], rows[name]
                summary = {
                    "run": f"variants-{stamp}",
                    "target": name,
                    "concurrency": level,
                    "rounds": args.rounds,
                    "ratio": round(statistics.median(gg["rps"] / dd["rps"] for dd, gg in zip(d, g, strict=True)), 3),
                    "ratio_rounds": [round(gg["rps"] / dd["rps"], 3) for dd, gg in zip(d, g, strict=True)],
                    "added_p50_ms": round(
                        statistics.median(gg["p50_ms"] - dd["p50_ms"] for dd, gg in zip(d, g, strict=True)), 2
                    ),
                    "p50_ms_rounds": [gg["p50_ms"] for gg in g],
                    "rps_rounds": [gg["rps"] for gg in g],
                    "errors": sum(gg.get("errors", 0) + gg.get("non2xx", 0) for gg in g),
                    "loadavg1": [gg["loadavg1"] for gg in g],
                    "cpu_ms_per_call": round(statistics.median(gg.get("cpu_ms_per_call", 0) for gg in g), 3),
                }
                print(json.dumps(summary), flush=True)
                with open(RESULTS / f"variants-{stamp}.jsonl", "a") as fh:
                    fh.write(json.dumps(summary) + "\n")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
