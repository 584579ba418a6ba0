"""Invalidation of what the request path caches (key -> allocation, model, provider, price).

Every service that changes something a proxied call reads bumps one generation number in the
shared cache; request-path caches key their entries by it, so a revocation is seen by every
process on its next call. Realtime sessions poll it to notice changes within their watch tick.

The bump happens once the change has committed (`transaction.on_commit`), never before: a call
that read the new number while the change was still uncommitted would load the old state, keep
it under the new number, and nothing would invalidate it again (the Django admin saves inside a
transaction of its own, so "after the service's atomic block" is not enough).
"""

import threading
import time
from typing import SupportsInt

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

GENERATION_KEY = "gw:auth-generation"


_local = threading.local()


def _read() -> object:
    """cache.get(GENERATION_KEY), on Redis without Django's per-call client construction and key
    validation (this runs on every proxied call): the Redis client is kept per thread and backend."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return backend.get(GENERATION_KEY)
    held = getattr(_local, "redis", None)
    if held is None or held[0] is not backend:
        key = backend.make_and_validate_key(GENERATION_KEY)
        held = _local.redis = (backend, backend._cache.get_client(key), key)
    raw = held[1].get(held[2])
    # RedisCacheClient._serializer is set in its __init__ but missing from django-stubs
    return None if raw is None else backend._cache._serializer.loads(raw)  # type: ignore[union-attr]


def auth_generation() -> int:
    value = _read()
    if value is None:
        cache.add(GENERATION_KEY, _fresh_generation(), timeout=None)
        value = cache.get(GENERATION_KEY) or _fresh_generation()
    if type(value) is int:
        return value
    if isinstance(value, str | bytes | SupportsInt):
        return int(value)
    raise TypeError(f"the auth generation is not a number: {value!r}")


def bump_auth_generation() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:
        cache.set(GENERATION_KEY, _fresh_generation(), timeout=None)


def _fresh_generation() -> int:
    # After the shared cache lost the key (flush, restart, eviction) the number must not repeat
    # one a process already holds, or that process would keep serving a stale snapshot.
    return time.time_ns()
