"""Invalidation of what the request path caches (key -> allocation, model, provider, price).

Every service that changes something a proxied call reads bumps one generation number in the
shared cache; request-path caches key their entries by it, so a revocation is seen by every
process on its next call. Realtime sessions poll it to notice changes within their watch tick.
"""

import time

from django.core.cache import cache

GENERATION_KEY = "gw:auth-generation"


def auth_generation() -> int:
    value = cache.get(GENERATION_KEY)
    if value is None:
        cache.add(GENERATION_KEY, _fresh_generation(), timeout=None)
        value = cache.get(GENERATION_KEY) or _fresh_generation()
    return int(value)


def bump_auth_generation() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:
        cache.set(GENERATION_KEY, _fresh_generation(), timeout=None)


def _fresh_generation() -> int:
    # After the shared cache lost the key (flush, restart, eviction) the number must not repeat
    # one a process already holds, or that process would keep serving a stale snapshot.
    return time.time_ns()
