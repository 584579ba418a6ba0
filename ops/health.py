"""Readiness and the health detail.

Readiness means "this process can serve": the database reachable and migrated, and the process not
draining (SIGTERM received). Redis is not part of it: `/v1` keeps serving while Redis is down (the
limits fail open, the spool falls back to a file), and a probe that failed on a shared dependency
would take every instance out of the load balancer at once. Redis and the Celery heartbeats are
the health detail instead (and /metrics).

Sync (Django's ORM and redis-py); ops.asgi runs them in a thread with a time limit. A failure is
named by its dependency and the exception's class only: a driver's message may carry a host name
or a user, which an unauthenticated endpoint must not print.
"""

import logging

import redis
from django.conf import settings
from django.db import connection

from . import heartbeat

logger = logging.getLogger(__name__)
_migrated = False  # once every migration is applied it stays so for this process's code
_draining = False


def draining_started() -> None:
    """Called when the server begins its shutdown: from then on the process is not ready."""
    global _draining
    _draining = True


def draining_check() -> str | None:
    return "draining (shutting down: calls in flight are finishing)" if _draining else None


def database_check() -> str | None:
    global _migrated
    from django.db.migrations.executor import MigrationExecutor

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not _migrated:
            executor = MigrationExecutor(connection)
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                return "migrations not applied"
            _migrated = True
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("readiness: database check failed", exc_info=True)  # the detail, for the operator only
        return f"unreachable ({type(exc).__name__})"
    finally:
        connection.close()
    return None


CHECKS = {"database": database_check, "draining": draining_check}


def detail() -> dict[str, str]:
    """Redis and the Celery processes' liveness, in words: shown beside readiness, never part of it."""
    if not settings.REDIS_URL:
        return {"redis": "not configured"}
    try:
        ages = heartbeat.ages()
    except redis.RedisError as exc:
        logger.warning("health: redis unreachable", exc_info=True)
        return {"redis": f"unreachable ({type(exc).__name__})"}
    found = {"redis": "ok"}
    for process, age in ages.items():
        found[process] = "never seen" if age is None else f"last seen {age:.0f} s ago"
    return found
