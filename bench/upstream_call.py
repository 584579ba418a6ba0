#!/usr/bin/env python3
"""The upstream client's CPU per call, without the gateway around it: `proxy.upstream.send` + `read`
+ `close` of one chat completion, sequentially, against the shared fake upstream (0 ms, its own
process), on uvloop as the server runs it. `--tree OTHER` measures another checkout's
`proxy/upstream.py` the same way; the trees alternate round by round (order flipped each round) and
the medians are compared, which holds better on a shared machine than a whole-server A/B.

    .venv/bin/python bench/upstream_call.py --tree /work/wt/main --rounds 10 --calls 2000

Each round is a fresh process (`--inner`) that imports the tree's modules (Django set up with its
settings; no database or Redis is touched), warms up, then reads its own CPU time (user + system)
around the calls. `--callgrind N` also counts the instructions of N calls of each tree under
valgrind, a count that load does not move (two runs per tree, N and 2N calls: the difference is N calls' own).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
HARNESS = Path(os.environ.get("BENCH_HARNESS", HERE.parent / "shared" / "bench")).resolve()
BENCH_PY = os.environ.get("BENCH_PY", "/tmp/venv-bench/bin/python")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def _inner(port: int, calls: int, warmup: int) -> None:
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

    import django
    import uvloop

    django.setup()
    from allocations.access import ProviderInfo
    from proxy import upstream
    from proxy.registry import ENDPOINTS

    provider = ProviderInfo(
        id="p", kind="openai", base_url=f"http://127.0.0.1:{port}/v1", api_version="", api_key="sk-up", is_active=True
    )

    class Entry:  # the two fields of ScopedAllocation that `send` reads
        upstream_name = "gpt-4o-mini"

    entry = Entry()
    entry.provider = provider  # type: ignore[attr-defined]
    endpoint = ENDPOINTS["chat.completions"]
    payload = json.dumps(BODY).encode()

    async def one(i: int) -> int:
        reply = await upstream.send(entry=entry, endpoint=endpoint, body=BODY, payload=payload, request_id=f"req-{i}")  # type: ignore[arg-type]
        try:
            data = await reply.read()
        finally:
            reply.close()
        assert reply.status == 200, (reply.status, data[:200])
        return len(data)

    async def main() -> dict:
        for i in range(warmup):
            await one(i)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(calls):
            await one(i)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await upstream.session_close()
        return {"cpu_us": 1e6 * cpu / calls, "wall_us": 1e6 * wall / calls}

    print(json.dumps(uvloop.run(main())), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_tree(tree: Path, port: int, calls: int, warmup: int) -> dict:
    out = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--inner", "--port", str(port)]
        + ["--calls", str(calls), "--warmup", str(warmup)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _callgrind(tree: Path, port: int, calls: int) -> int:
    """Instructions of `calls` calls: a run of 2 x calls less a run of `calls` (start-up cancels)."""
    return _instructions(tree, port, 2 * calls) - _instructions(tree, port, calls)


def _instructions(tree: Path, port: int, calls: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            + [str(tree / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--inner"]
            + ["--port", str(port), "--calls", str(calls), "--warmup", "100"],
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        )
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no callgrind summary")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", help="another checkout to alternate with this one")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--callgrind", type=int, default=0, help="also count instructions of N calls per tree")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        _inner(args.port, args.calls, args.warmup)
        return
    trees = {"this": HERE} | ({"other": Path(args.tree).resolve()} if args.tree else {})
    port = _free_port()
    fake = subprocess.Popen(
        [BENCH_PY, str(HARNESS / "fake_upstream.py"), "--port", str(port), "--latency-ms", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        found: dict[str, list[float]] = {name: [] for name in trees}
        for n in range(args.rounds):
            order = list(trees) if n % 2 == 0 else list(reversed(trees))
            for name in order:
                row = _run_tree(trees[name], port, args.calls, args.warmup)
                found[name].append(row["cpu_us"])
                load = Path("/proc/loadavg").read_text().split()[0]
                print(json.dumps({"round": n, "tree": name, **row, "loadavg1": float(load)}), flush=True)
        summary = {name: round(statistics.median(values), 1) for name, values in found.items()}
        if args.callgrind and shutil.which("valgrind"):
            for name, tree in trees.items():
                summary[f"{name}_instructions_per_call"] = _callgrind(tree, port, args.callgrind) // args.callgrind
        print(json.dumps({"median_cpu_us_per_call": summary}), flush=True)
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
