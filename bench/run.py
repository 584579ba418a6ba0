#!/usr/bin/env python3
"""Runs the gateway benchmark: fake upstreams (0 ms and 50 ms), the gateway
(`gateway_project.serve --workers N`, one daphne worker by default) on PostgreSQL + Redis with caps,
reservations and call records on, and thin_proxy.py (aiohttp) as the reference; drives
../shared/bench/compare.py against each and writes JSON lines to bench/results/raw/ (not in git; bench/summarize.py).

  bench/run.py [--duration 5] [--rounds 2] [--levels 1,16,64] [--only gateway|thin] [--cases ...]
               [--workers 1,2]   (one gateway per worker count, same run: target gateway-wN)
               [--tree OTHER]    (OTHER's gateway too, same run and database: target base)
               [--hold SECONDS]  (start everything, print ports and pids, serve: for py-spy/strace)
               [--servers]       (the server's share, a 2x2: also thin_proxy under our daphne, target
                                  thin_daphne, and the gateway under uvicorn, target gateway_uvicorn;
                                  for the 0 ms JSON case also thin_daphne with a call's round trips,
                                  target ledger_floor: bench/ledger_floor.py)

Needs wrk (apt-get install wrk) and a venv with the harness' dependencies (BENCH_PY, default
/tmp/venv-bench/bin/python: httptools uvloop orjson fastapi uvicorn[standard] aiohttp httpx).
--servers installs what its two targets need that the gateway's venv lacks (FastAPI for thin_proxy,
uvicorn and httptools for the gateway), at BENCH_PY's versions, into bench/.deps/ (not in git).
"""

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(os.environ.get("BENCH_HARNESS", ROOT.parent / "shared" / "bench"))
BENCH_PY = os.environ.get("BENCH_PY", "/tmp/venv-bench/bin/python")
GW_PY = str(ROOT / ".venv" / "bin" / "python")
RESULTS = ROOT / "bench" / "results" / "raw"  # raw runs, not in git: bench/summarize.py keeps their figures
CASES = {  # name: (upstream latency ms, stream)
    "0ms": (0, False),
    "0ms-limited": (0, False),  # the same model with rate limits on (bench/seed.py: bench0lim)
    "0ms-stream": (0, True),
    "50ms": (50, False),
    "50ms-stream": (50, True),
    # a realistic stream: 100 chunks 10 ms apart after a 50 ms first token (its own fake upstream)
    "realstream": ("real", True),
}
UPSTREAM_ARGS = {0: ["--latency-ms", "0"], 50: ["--latency-ms", "50"]}
UPSTREAM_ARGS["real"] = ["--latency-ms", "50", "--chunks", "100", "--chunk-interval-ms", "10"]
# --servers: what thin_proxy and uvicorn need beyond the gateway's venv (whose pydantic, anyio,
# click, h11, aiohttp are the versions the bench venv has); the versions are BENCH_PY's.
SERVER_DEPS = ("fastapi", "starlette", "annotated-doc", "opentelemetry-api", "uvicorn", "httptools")
DEPS = ROOT / "bench" / ".deps"
UVICORN_ARGS = ["--no-access-log", "--loop", "uvloop", "--http", "httptools"]  # thin_proxy's and gateway_uvicorn's


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


def wait_http(port: int, timeout: float = 180) -> None:
    """Until a worker answers (serve's supervisor binds the port before its workers are up)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError:
            return  # 401: served
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"no worker answers on {port}")


def stop(procs: list) -> None:
    """Terminates the bench's processes and waits for each (a benchmark's `finally`)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    port: int, env: dict, *, concurrency: int, seconds: float, script: str = "chat.lua", timeout_s: int = 30
) -> str:
    """One wrk run (one thread) against the gateway on `port` with a Lua script of the harness (or a
    path); its standard output, where the script prints its BENCHJSON summary."""
    return subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", f"{timeout_s}s", "-s", script]
        + [f"http://127.0.0.1:{port}"],
        env=env,
        cwd=HARNESS,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def server_deps() -> Path:
    """The directory (for PYTHONPATH) holding SERVER_DEPS at BENCH_PY's versions for the gateway's
    interpreter; installed with its pip once per set of versions, without dependencies."""
    code = "import sys, importlib.metadata as m; print(*(f'{d}=={m.version(d)}' for d in sys.argv[1:]))"
    pins = subprocess.run([BENCH_PY, "-c", code, *SERVER_DEPS], check=True, capture_output=True, text=True).stdout
    target = DEPS / hashlib.sha256(pins.encode()).hexdigest()[:12]
    if not (target / "PINS").exists():
        print(f"installing {pins.strip()} into {target}", file=sys.stderr, flush=True)
        pip = [GW_PY, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
        subprocess.run([*pip, *pins.split()], check=True)
        (target / "PINS").write_text(pins)
    return target


def _model(case: str, latency: int | str) -> str:
    return f"bench{latency}{'lim' if case.endswith('-limited') else ''}/gpt-4o-mini"


def _hold(seconds: float, upstream: dict, key: str, gateways: dict, thin: dict, thin_ports: dict, floors: dict) -> None:
    """Keeps the bench world up for a profiler or strace (--hold): prints its addresses and pids;
    `floors` maps a --servers target's name to its processes by upstream latency."""
    world = {
        "upstream": upstream,
        "key": key,
        "gateways": {name: {"port": port, "pid": proc.pid} for name, (port, proc) in gateways.items()},
        "thin": {str(k): {"port": thin_ports[k], "pid": proc.pid} for k, proc in thin.items()},
    }
    for name, by_latency in floors.items():
        if by_latency:
            world[name] = {str(k): {"port": port, "pid": proc.pid} for k, (port, proc) in by_latency.items()}
    print(json.dumps(world), flush=True)
    time.sleep(seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--only", choices=["gateway", "thin"], default=None)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--workers", default="1", help="comma-separated worker counts, one gateway each")
    ap.add_argument(
        "--tree", help="another checkout (same migrations) served beside this one on the same database: target base"
    )
    ap.add_argument("--hold", type=float, default=0, help="start everything, print where it is, serve this many s")
    ap.add_argument(
        "--servers",
        action="store_true",
        help="also thin_proxy under gateway_project.serve (thin_daphne), the gateway under uvicorn (gateway_uvicorn)",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup below

    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gw_bench"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3"),
        "DEBUG": "False",
        "SECRET_KEY": "bench-" + secrets.token_hex(16),
        "GATEWAY_ENCRYPTION_KEY": os.environ.get(
            "GATEWAY_ENCRYPTION_KEY", "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E="
        ),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    ensure_database(env["DATABASE_URL"])
    procs = []
    try:
        ports = {latency: free_port() for latency in UPSTREAM_ARGS}
        for latency, port in ports.items():
            procs.append(
                subprocess.Popen(
                    [BENCH_PY, str(HARNESS / "fake_upstream.py"), "--port", str(port), *UPSTREAM_ARGS[latency]],
                    stdout=subprocess.DEVNULL,
                )
            )
        subprocess.run([GW_PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        upstream = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
        key = (
            subprocess.run(
                [GW_PY, "bench/seed.py", upstream[0], upstream[50], upstream["real"]],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        counts = [int(n) for n in args.workers.split(",")]
        gateways, thin_ports = {}, {latency: free_port() for latency in UPSTREAM_ARGS}
        trees = [("gateway", ROOT)] + ([("base", Path(args.tree).resolve())] if args.tree else [])
        for label, tree in trees:
            for count in counts:
                gw_port = free_port()
                # -v 0: no access log line per request (thin_proxy runs with --no-access-log too).
                gateway = subprocess.Popen(
                    [str(tree / ".venv" / "bin" / "python"), "-m", "gateway_project.serve", "--workers", str(count)]
                    + ["-v", "0", "-b", "127.0.0.1", "-p", str(gw_port), "gateway_project.asgi:application"],
                    cwd=tree,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                procs.append(gateway)
                name = label if len(counts) == 1 else f"{label}-w{count}"
                gateways[name] = (gw_port, gateway)
        deps = server_deps() if args.servers else None
        if deps is not None:  # the gateway under uvicorn: same interpreter, database and key as `gateway`
            gw_port = free_port()
            gateway = subprocess.Popen(
                [GW_PY, "-m", "uvicorn", "gateway_project.asgi:application", "--host", "127.0.0.1"]
                + ["--port", str(gw_port), "--log-level", "warning", *UVICORN_ARGS],
                cwd=ROOT,
                env={**env, "PYTHONPATH": str(deps)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(gateway)
            gateways["gateway_uvicorn"] = (gw_port, gateway)
        thin, floors, ledger_floors = {}, {}, {}
        for latency, port in thin_ports.items():
            thin_env = {**os.environ, "UPSTREAM": upstream[latency], "GATEWAY_KEY": "sk-thin", "CLIENT": "aiohttp"}
            if deps is not None:  # thin_proxy under the gateway's server, patched as it serves the gateway
                floor_port = free_port()
                floor = subprocess.Popen(
                    [GW_PY, "-m", "gateway_project.serve", "--workers", "1", "-v", "0", "-b", "127.0.0.1"]
                    + ["-p", str(floor_port), "bench.thin_daphne:app"],
                    cwd=ROOT,
                    env={**thin_env, "PYTHONPATH": f"{deps}{os.pathsep}{HARNESS}"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                procs.append(floor)
                floors[latency] = (floor_port, floor)
                if latency == 0:  # the same app with a call's round trips (bench/ledger_floor.py)
                    ledger_port = free_port()
                    ledger = subprocess.Popen(
                        [GW_PY, "-m", "gateway_project.serve", "--workers", "1", "-v", "0", "-b", "127.0.0.1"]
                        + ["-p", str(ledger_port), "bench.ledger_floor:app"],
                        cwd=ROOT,
                        env={
                            **env,  # the gateway's settings, for its connections
                            **{name: thin_env[name] for name in ("UPSTREAM", "GATEWAY_KEY", "CLIENT")},
                            "PYTHONPATH": f"{deps}{os.pathsep}{HARNESS}",
                        },
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    procs.append(ledger)
                    ledger_floors[latency] = (ledger_port, ledger)
            thin[latency] = subprocess.Popen(
                [
                    str(Path(BENCH_PY).parent / "uvicorn"),
                    "thin_proxy:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    *UVICORN_ARGS,
                ],
                cwd=HARNESS,
                env=thin_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(thin[latency])
        for port in (*ports.values(), *(p for p, _ in gateways.values()), *thin_ports.values()):
            wait_port(port)
        for port, _ in (*gateways.values(), *floors.values(), *ledger_floors.values()):
            wait_http(port)
        if args.hold:
            _hold(
                args.hold,
                upstream,
                key,
                gateways,
                thin,
                thin_ports,
                {"thin_daphne": floors, "ledger_floor": ledger_floors},
            )
            return
        out_dir = RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for case in args.cases.split(","):
            latency, stream = CASES[case]
            targets = []
            if args.only in (None, "gateway"):
                for name, (gw_port, gateway) in gateways.items():
                    model = _model(case, latency)
                    targets.append((name, f"http://127.0.0.1:{gw_port}", key, model, gateway.pid))
            if args.only in (None, "thin"):
                targets.append(
                    (
                        "thin_proxy_aiohttp",
                        f"http://127.0.0.1:{thin_ports[latency]}",
                        "sk-thin",
                        "gpt-4o-mini",
                        thin[latency].pid,
                    )
                )
                if latency in floors:
                    floor_port, floor = floors[latency]
                    targets.append(
                        ("thin_daphne", f"http://127.0.0.1:{floor_port}", "sk-thin", "gpt-4o-mini", floor.pid)
                    )
                if latency in ledger_floors and not stream and "1" in args.levels.split(","):
                    ledger_port, ledger = ledger_floors[latency]
                    targets.append(
                        ("ledger_floor", f"http://127.0.0.1:{ledger_port}", "sk-thin", "gpt-4o-mini", ledger.pid)
                    )
            for name, url, gw_key, model, pid in targets:
                levels = "1" if name == "ledger_floor" else args.levels  # one connection: c = 1 only
                cmd = [
                    BENCH_PY,
                    str(HARNESS / "compare.py"),
                    "--direct",
                    upstream[latency],
                    "--gateway",
                    url,
                    "--gateway-key",
                    gw_key,
                    "--model",
                    model,
                    "--direct-model",
                    "gpt-4o-mini",
                    "-c",
                    levels,
                    "-d",
                    str(args.duration),
                    "--rounds",
                    str(args.rounds),
                    "--warmup",
                    "2",
                    "--gateway-pid",
                    str(pid),
                    "--name",
                    name,
                ]
                if stream:
                    cmd.append("--stream")
                print(f"== {name} {case}", flush=True)
                result = subprocess.run(cmd, capture_output=True, text=True)
                sys.stderr.write(result.stderr)
                with open(out_dir / f"{stamp}.jsonl", "a") as fh:
                    for line in result.stdout.splitlines():
                        if line.startswith("{"):
                            row = {"target": name, "case": case, **json.loads(line)}
                            fh.write(json.dumps(row) + "\n")
                            print(json.dumps(row), flush=True)
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
