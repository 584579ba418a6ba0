#!/usr/bin/env python3
"""What the metrics and the per-call log line cost on the hot path: two gateway processes in the
same run, on the same database, Redis and fake upstream, one with GATEWAY_METRICS_TOKEN (so
prometheus_client counts, in multiprocess mode as under `serve --workers`) and the JSON call log
on, one with both off; compare.py against each in turn, alternating, CPU per call from /proc.

  bench/observability.py [--duration 5] [--rounds 3] [--levels 16] [--pairs 2] [--stream]

Same setup as bench/run.py (wrk, BENCH_PY, DATABASE_URL, REDIS_URL); JSON lines to bench/results/raw/.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH_PY, GW_PY, HARNESS, RESULTS, ROOT, ensure_database, free_port, stop, wait_port  # noqa: E402

VARIANTS = {
    "plain": {"GATEWAY_METRICS_TOKEN": "", "GATEWAY_CALL_LOG": "false"},
    "instrumented": {
        "GATEWAY_METRICS_TOKEN": "bench-metrics-" + "m" * 32,
        "GATEWAY_CALL_LOG": "true",
        "GATEWAY_LOG_FORMAT": "json",
    },
}


def gateway_command(port: int) -> list[str]:
    command = [GW_PY, "-m", "gateway_project.serve", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    if "--workers" in (ROOT / "gateway_project" / "serve.py").read_text():
        command += ["--workers", "1"]  # one process each: the figure is CPU per call, not scaling
    return [*command, "gateway_project.asgi:application"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="16")
    ap.add_argument("--pairs", type=int, default=2, help="plain/instrumented pairs, order flipped each pair")
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()
    base = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gw_bench"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3"),
        "DEBUG": "False",
        "SECRET_KEY": "bench-" + "k" * 50,
        "GATEWAY_ENCRYPTION_KEY": "m1mcCTj8YbQ2vFq0q3v5U8m4fJx3l0zYQ6sQ3rJ2m2E=",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    ensure_database(base["DATABASE_URL"])
    procs, metrics_dir = [], tempfile.mkdtemp(prefix="bench-metrics-")
    try:
        upstream_port = free_port()
        procs.append(
            subprocess.Popen(
                [BENCH_PY, str(HARNESS / "fake_upstream.py"), "--port", str(upstream_port), "--latency-ms", "0"],
                stdout=subprocess.DEVNULL,
            )
        )
        upstream = f"http://127.0.0.1:{upstream_port}"
        subprocess.run([GW_PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=base, check=True)
        seeded = subprocess.run(
            [GW_PY, "bench/seed.py", upstream, upstream], cwd=ROOT, env=base, check=True, capture_output=True, text=True
        )
        key = seeded.stdout.strip().splitlines()[-1]
        gateways = {}
        for name, extra in VARIANTS.items():
            env = {**base, **extra}
            if name == "instrumented":
                env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            port = free_port()
            process = subprocess.Popen(
                gateway_command(port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            procs.append(process)
            gateways[name] = (port, process.pid)
        for port in (upstream_port, *(p for p, _ in gateways.values())):
            wait_port(port)
        out = RESULTS / f"observability-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        for pair in range(args.pairs):
            order = ["plain", "instrumented"] if pair % 2 == 0 else ["instrumented", "plain"]
            for name in order:
                port, pid = gateways[name]
                command = [
                    BENCH_PY, str(HARNESS / "compare.py"), "--direct", upstream, "--gateway",
                    f"http://127.0.0.1:{port}", "--gateway-key", key, "--model", "bench0/gpt-4o-mini",
                    "--direct-model", "gpt-4o-mini", "-c", args.levels, "-d", str(args.duration),
                    "--rounds", str(args.rounds), "--warmup", "2", "--gateway-pid", str(pid), "--name", name,
                ]  # fmt: skip
                if args.stream:
                    command.append("--stream")
                result = subprocess.run(command, capture_output=True, text=True)
                sys.stderr.write(result.stderr)
                with out.open("a") as sink:
                    for line in result.stdout.splitlines():
                        if line.startswith("{"):
                            row = {"variant": name, "pair": pair, **json.loads(line)}
                            sink.write(json.dumps(row) + "\n")
                            print(json.dumps(row), flush=True)
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
