"""Fails `make test` early, with instructions, when PostgreSQL or Redis is not reachable."""

import os
import sys

import psycopg
import redis

db_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
problems = []
try:
    # Connect to the maintenance database: the test database is created by pytest-django.
    base, _, _ = db_url.rpartition("/")
    psycopg.connect(base + "/postgres", connect_timeout=3).close()
except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
    problems.append(
        f"PostgreSQL is not reachable at {db_url} ({exc.__class__.__name__}).\n"
        "  Start it, e.g.: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
        "  or point DATABASE_URL at a server you can use."
    )
try:
    redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
    problems.append(
        f"Redis is not reachable at {redis_url} ({exc.__class__.__name__}).\n"
        "  Start it, e.g.: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''\n"
        "  or point REDIS_URL at a server you can use."
    )
if problems:
    print("make test needs PostgreSQL and Redis:\n" + "\n".join(problems), file=sys.stderr)
    sys.exit(1)
print("PostgreSQL and Redis are reachable.")
