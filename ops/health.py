"""Readiness checks: the database reachable and migrated, Redis reachable when configured.

Sync (Django's ORM and redis-py); ops.asgi runs them in a thread with a time limit. A failure is
named by its dependency and the exception's class only: a driver's message may carry a host name
or a user, which an unauthenticated endpoint must not print.
"""

import logging

import redis
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

logger = logging.getLogger(__name__)
_migrated = False  # once every migration is applied it stays so for this process's code
_redis: redis.Redis | None = None


def database_check() -> str | None:
    global _migrated
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


def redis_check() -> str | None:
    global _redis
    if not settings.REDIS_URL:
        return None
    try:
        if _redis is None:
            _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        _redis.ping()
    except Exception as exc:  # noqa: BLE001
        logger.warning("readiness: redis check failed", exc_info=True)
        return f"unreachable ({type(exc).__name__})"
    return None


CHECKS = {"database": database_check, "redis": redis_check}
