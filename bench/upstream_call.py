#!/usr/bin/env python3
"""The upstream client's CPU per call, without the gateway around it: `proxy.upstream.send` + `read`
+ `close` of one chat completion, sequentially, against the shared fake upstream (0 ms, its own
process), on uvloop as the server runs it. `--tree OTHER` measures another checkout's
`proxy/upstream.py` the same way; the trees alternate round by round (order flipped each round) and
the medians are compared, which holds better on a shared machine than a whole-server A/B.

    .venv/bin/python bench/upstream_call.py --tree /work/wt/main --rounds 10 --calls 2000 --thin --count --callgrind 600

Each round is a fresh process (`--inner`) that imports the tree's modules (Django set up with its
settings; no database or Redis is touched), warms up, then reads its own CPU time (user + system)
around the calls. `--callgrind N` also counts the instructions of N calls of each tree under
valgrind (two runs per tree, N and 2N calls: the difference is N calls' own; it still moves by a
few % from run to run with the event loop's wake-ups), and `--count` the Python and C function
calls per call (sys.setprofile), a count that load does not move. `--thin` adds the thin
pass-through's own upstream call (../shared/bench/thin_proxy.py with CLIENT=aiohttp) as a target.
`--jar` only times aiohttp's default cookie jar against a provider that sets two cookies per answer
(the fake upstream sets none, so the calls above do not show it).
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
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
HARNESS = Path(os.environ.get("BENCH_HARNESS", HERE.parent / "shared" / "bench")).resolve()
BENCH_PY = os.environ.get("BENCH_PY", "/tmp/venv-bench/bin/python")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def _inner(port: int, calls: int, warmup: int, thin: bool, count: bool) -> None:
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

    thin_session: list = []

    async def one_thin(i: int) -> int:
        """The thin pass-through's upstream call (../shared/bench/thin_proxy.py, CLIENT=aiohttp)."""
        import aiohttp

        if not thin_session:
            thin_session.append(
                aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{port}",
                    timeout=aiohttp.ClientTimeout(total=60),
                    connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300),
                    auto_decompress=False,
                )
            )
        headers = {"authorization": "Bearer sk-up", "content-type": "application/json"}
        resp = await thin_session[0].post("/v1/chat/completions", data=payload, headers=headers)
        data = await resp.read()
        resp.release()
        assert resp.status == 200, (resp.status, data[:200])
        return len(data)

    async def one(i: int) -> int:
        if thin:
            return await one_thin(i)
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
        events = [0, 0]  # Python function calls, C function calls

        def counter(frame: object, event: str, arg: object) -> None:
            if event == "call":
                events[0] += 1
            elif event == "c_call":
                events[1] += 1

        if count:
            sys.setprofile(counter)
            threading.setprofile(counter)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(calls):
            await one(i)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        sys.setprofile(None)
        if count:
            return {"python_calls": events[0] / calls, "c_calls": events[1] / calls}
        await upstream.session_close()
        for opened in thin_session:
            await opened.close()
        return {"cpu_us": 1e6 * cpu / calls, "wall_us": 1e6 * wall / calls}

    print(json.dumps(uvloop.run(main())), flush=True)


# What api.openai.com's Cloudflare front sets on answers (values of the same length).
CF_COOKIES = [
    "__cf_bm=" + "a" * 52 + "-1733480000-1.0.1.1-" + "B" * 64 + "; path=/; expires=Sun, 06-Dec-26 12:30:00 GMT;"
    " domain=.api.openai.com; HttpOnly; Secure; SameSite=None",
    "_cfuvid=" + "C" * 36 + "-1733480000000-0.0.1.1-604800000; path=/; domain=.api.openai.com; HttpOnly; Secure;"
    " SameSite=None",
]


def _jar_cost() -> dict:
    """µs per call of aiohttp's default cookie jar against a provider that sets two cookies on every
    answer: storing them (every answer) and filtering them for the next request's URL."""
    import asyncio
    import timeit

    import aiohttp
    from yarl import URL

    async def measure() -> dict:
        url, n = URL("https://api.openai.com/v1/chat/completions"), 20_000
        jar, empty, dummy = aiohttp.CookieJar(), aiohttp.CookieJar(), aiohttp.DummyCookieJar()
        jar.update_cookies_from_headers(CF_COOKIES, url)

        def best(fn: object) -> float:
            return round(min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6, 2)  # type: ignore[arg-type]

        return {
            "store_us": best(lambda: jar.update_cookies_from_headers(CF_COOKIES, url)),
            "filter_us": best(lambda: jar.filter_cookies(url)),
            "filter_empty_jar_us": best(lambda: empty.filter_cookies(url)),
            "filter_dummy_jar_us": best(lambda: dummy.filter_cookies(url)),
        }

    return asyncio.run(measure())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_tree(tree: Path, port: int, calls: int, warmup: int, thin: bool = False, count: bool = False) -> dict:
    out = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--inner", "--port", str(port)]
        + ["--calls", str(calls), "--warmup", str(warmup)]
        + (["--thin"] if thin else [])
        + (["--count"] if count else []),
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _callgrind(tree: Path, port: int, calls: int, thin: bool) -> int:
    """Instructions of `calls` calls: a run of 2 x calls less a run of `calls` (start-up cancels)."""
    return _instructions(tree, port, 2 * calls, thin) - _instructions(tree, port, calls, thin)


def _instructions(tree: Path, port: int, calls: int, thin: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            + [str(tree / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--inner"]
            + ["--port", str(port), "--calls", str(calls), "--warmup", "100"]
            + (["--thin"] if thin else []),
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
    ap.add_argument("--thin", action="store_true", help="also measure the thin pass-through's call (target thin)")
    ap.add_argument("--jar", action="store_true", help="only time the default cookie jar per call (no upstream)")
    ap.add_argument("--count", action="store_true", help="also count the function calls (Python, C) per call")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.jar:
        print(json.dumps(_jar_cost()))
        return
    if args.inner:
        _inner(args.port, args.calls, args.warmup, args.thin, args.count)
        return
    trees = {"this": HERE} | ({"other": Path(args.tree).resolve()} if args.tree else {})
    if args.thin:
        trees["thin"] = HERE
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
                row = _run_tree(trees[name], port, args.calls, args.warmup, thin=name == "thin")
                found[name].append(row["cpu_us"])
                load = Path("/proc/loadavg").read_text().split()[0]
                print(json.dumps({"round": n, "tree": name, **row, "loadavg1": float(load)}), flush=True)
        summary = {name: round(statistics.median(values), 1) for name, values in found.items() if values}
        if args.count:
            for name, tree in trees.items():
                counted = _run_tree(tree, port, args.calls, args.warmup, thin=name == "thin", count=True)
                summary |= {f"{name}_{key}_per_call": value for key, value in counted.items()}
        if args.callgrind and shutil.which("valgrind"):
            for name, tree in trees.items():
                instructions = _callgrind(tree, port, args.callgrind, name == "thin")
                summary[f"{name}_instructions_per_call"] = instructions // args.callgrind
        print(json.dumps({"summary": summary}), flush=True)
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
