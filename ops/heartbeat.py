"""Liveness of the Celery worker and beat: each writes the time it was last alive into one Redis
hash every INTERVAL_S (the worker from its timer, beat from its scheduler's tick; the wiring is in
gateway_project.celery). The health detail and /metrics read the ages. A worker or beat that
stopped, hung or lost Redis stops writing; the alert rule fires on the age.
"""

import logging
import time

import redis
from django.conf import settings

logger = logging.getLogger(__name__)
KEY = "gw:heartbeat"
INTERVAL_S = 15.0
PROCESSES = ("celery_worker", "celery_beat")
_client: redis.Redis | None = None


def _redis() -> redis.Redis | None:
    global _client
    if not settings.REDIS_URL:
        return None
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _client


def beat(*, process: str) -> None:
    """Records that `process` (one of PROCESSES) is alive now; a Redis failure is logged, not raised."""
    client = _redis()
    if client is None:
        return
    try:
        client.hset(KEY, process, f"{time.time():.3f}")
    except redis.RedisError:
        logger.warning("heartbeat of %s not written: Redis unreachable", process, exc_info=True)


def ages() -> dict[str, float | None]:
    """Seconds since each process's last heartbeat (None: never seen). Raises redis.RedisError."""
    client = _redis()
    if client is None:
        return {}
    raw = client.hmget(KEY, list(PROCESSES))
    now = time.time()
    return {
        process: None if value is None else max(0.0, now - float(value))
        for process, value in zip(PROCESSES, raw, strict=True)
    }
