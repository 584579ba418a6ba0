#!/usr/bin/env python3
"""Instructions per JSON call of two trees' gateways under callgrind: a count the machine's load
does not move (CPU milliseconds do, ±10-20 % a round on a shared machine).

A held world (`bench/run.py --cases 0ms --hold 3000 > world.json`, same DATABASE_URL and REDIS_URL
in the environment) gives the fake upstream, the seeded database and the key. This starts one
`gateway_project.serve --workers 1` of this tree and one of `--tree OTHER` under
`valgrind --tool=callgrind` on that database, then in rounds (the order flipped each round) for
each: a warm-up burst (connections, pools), callgrind's counters zeroed, wrk at `--concurrency`
with a fixed number of calls, the counters dumped: user-space instructions of the worker process
per call (daphne, Django, the gateway, aiohttp, psycopg, the interpreter and its collector; not the
kernel). Medians and the round-paired difference; JSON lines to bench/results/raw/.

`--thin` serves each tree's `bench.thin_daphne:app` instead (the shared thin pass-through under our
daphne with the server patches of that tree, run.py's `thin_daphne` target, against the world's
0 ms upstream): the floor's instructions per call, the same way.

`--models A,B` counts this tree's one gateway with two bench models instead (`bench50/gpt-4o-mini`
against `bench0/gpt-4o-mini`: what the same code does per call with a 50 ms upstream and a 0 ms one).

  bench/instructions_alternate.py world.json --tree OTHER [--rounds 6] [--calls 240] [--concurrency 16] [--thin]
  bench/instructions_alternate.py world.json --models bench50/gpt-4o-mini,bench0/gpt-4o-mini --concurrency 64
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from run import HARNESS, RESULTS, ROOT, free_port, server_deps, wait_http
from run import wrk as run_wrk

ENV = {
    "DEBUG": "False",
    "SECRET_KEY": "bench-instructions-0123456789abcdef",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "LOG_LEVEL": "WARNING",
    "GATEWAY_ENCRYPTION_KEY": os.environ.get("GATEWAY_ENCRYPTION_KEY", "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E="),
}


def start(tree: Path, port: int, out: Path, thin: dict | None = None) -> subprocess.Popen:
    """The gateway of `tree`, or with `thin` (environment) its thin_daphne, under callgrind."""
    app = "bench.thin_daphne:app" if thin else "gateway_project.asgi:application"
    command = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/cg-%p.out"]
    command += [str(tree / ".venv" / "bin" / "python"), "-m", "gateway_project.serve", "--workers", "1"]
    command += ["-v", "0", "-b", "127.0.0.1", "-p", str(port), app]
    env = {**os.environ, **ENV, **(thin or {})}
    return subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen]) -> None:
    """valgrind takes a while to end a process it runs (it writes its last dump first)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker(supervisor: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
    return int(children[0])


def wrk(port: int, env: dict, concurrency: int, calls: int, seconds: int) -> int:
    """Runs `calls` calls (wrk stops each connection at its share, then idles to the end)."""
    env = {**env, "BENCH_MAX_REQUESTS": str(calls)}
    out = run_wrk(port, env, concurrency=concurrency, seconds=seconds, timeout_s=60)
    summary = json.loads(out.split("BENCHJSON", 1)[1].strip().splitlines()[0])
    return summary["requests"] - summary["err_status"]


def instructions(pid: int, out: Path) -> int:
    """Dumps the worker's counters (since the last zero) and reads their total."""
    before = set(out.glob(f"cg-{pid}.out*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    time.sleep(0.5)
    total = 0
    for dump in set(out.glob(f"cg-{pid}.out*")) - before:
        for line in dump.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
                break
        dump.unlink()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world", help="what bench/run.py --hold printed")
    ap.add_argument("--tree", help="the other checkout (same migrations)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=240)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--model", default="bench0/gpt-4o-mini")
    ap.add_argument("--models", help="two models, comma-separated: this tree's one gateway, model against model")
    ap.add_argument("--seconds", type=int, default=40, help="wrk's duration: long enough for --calls under valgrind")
    ap.add_argument("--thin", action="store_true", help="count each tree's thin_daphne instead of its gateway")
    args = ap.parse_args()
    if bool(args.tree) == bool(args.models) or (args.models and (args.thin or len(args.models.split(",")) != 2)):
        ap.error("give --tree OTHER, or --models A,B (two models, not with --thin)")
    world = json.loads(Path(args.world).read_text())
    env = {**os.environ, "BENCH_KEY": world["key"], "BENCH_MODEL": args.model}
    thin = None
    if args.thin:
        thin = {"UPSTREAM": world["upstream"]["0"], "GATEWAY_KEY": "sk-thin", "CLIENT": "aiohttp"}
        thin["PYTHONPATH"] = f"{server_deps()}{os.pathsep}{HARNESS}"
        env |= {"BENCH_KEY": "sk-thin", "BENCH_MODEL": "gpt-4o-mini"}
    out = Path(tempfile.mkdtemp(prefix="callgrind-"))
    if args.models:  # one process, counted per model
        trees = {ROOT.name: ROOT}
        models = dict.fromkeys(args.models.split(","), ROOT.name)
    else:
        trees = {ROOT.name: ROOT, Path(args.tree).resolve().name: Path(args.tree).resolve()}
        models = {name: name for name in trees}
    envs = {name: env | {"BENCH_MODEL": name} if args.models else env for name in models}
    procs, ports = [], {}
    try:
        for name, tree in trees.items():
            port = free_port()
            procs.append(start(tree, port, out, thin))
            ports[name] = port
        for port in ports.values():
            wait_http(port, timeout=600)
        pids = {name: worker(proc.pid) for name, proc in zip(trees, procs, strict=True)}
        for name, tree_name in models.items():  # the first calls import and fill caches: not counted
            wrk(ports[tree_name], envs[name], args.concurrency, 4 * args.concurrency, args.seconds)
        counts: dict[str, list[float]] = {name: [] for name in models}
        for index in range(args.rounds):
            order = list(models) if index % 2 == 0 else list(reversed(models))
            for name in order:
                port, pid = ports[models[name]], pids[models[name]]
                wrk(port, envs[name], args.concurrency, 2 * args.concurrency, 5)
                subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
                calls = wrk(port, envs[name], args.concurrency, args.calls, args.seconds)
                counts[name].append(instructions(pid, out) / max(calls, 1))
                load = Path("/proc/loadavg").read_text().split()[0]
                per_call = counts[name][-1] / 1e6
                print(f"round {index} {name}: {per_call:.4f} M instructions/call ({calls} calls, load {load})")
    finally:
        stop(procs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.jsonl").open("w") as raw:
        for name, values in counts.items():
            row = {
                "target": models[name] if args.models else name,
                "app": "thin_daphne" if thin else "gateway",
                "model": envs[name]["BENCH_MODEL"],
                "concurrency": args.concurrency,
                "rounds": args.rounds,
            }
            row |= {"minstr_per_call_median": round(statistics.median(values) / 1e6, 4), "per_round": values}
            print(json.dumps(row))
            raw.write(json.dumps(row) + "\n")
    this, other = list(counts.values())
    paired = [a / b - 1 for a, b in zip(this, other, strict=True)]
    print(f"{list(counts)[0]} against {list(counts)[1]}: {statistics.median(paired) * 100:+.2f} % (median of rounds)")


if __name__ == "__main__":
    main()
