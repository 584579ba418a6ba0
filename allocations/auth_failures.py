"""Refused bearers per client address, counted in the shared cache so the limit holds across
processes: /v1 and /v1/realtime refuse an address with 429 `rate_limited` (Retry-After: the rest of
the minute) once it has had GATEWAY_AUTH_FAILURES_PER_MINUTE refusals in the current minute.

The same counts are the record of unauthenticated rejects: they write no call record each (a
flood would otherwise write a row per request), but one log line per address and minute with the
count of the minute before (written by whichever process counts the address's next refusal) and
one when an address reaches the limit.
"""

import logging
import math
import time

from django.conf import settings

from lib.cache import counter_incr, counter_read

from .exceptions import TooManyAuthFailures

logger = logging.getLogger("gateway.auth")
WINDOW_S = 60


def _key(address: str, window: int) -> str:
    return f"gw:auth-fail:{address}:{window}"


def _refusal(now: float) -> TooManyAuthFailures:
    retry_after = max(1, math.ceil(WINDOW_S - now % WINDOW_S))
    return TooManyAuthFailures("too many requests with an invalid API key from this address", retry_after=retry_after)


async def auth_blocked(address: str) -> TooManyAuthFailures | None:
    """The 429 for an address already at its limit this minute, else None (also when the shared
    cache is unreachable: the limit fails open, authentication itself does not)."""
    now = time.time()
    try:
        count = await counter_read(_key(address, int(now // WINDOW_S)))
    except Exception:  # noqa: BLE001 - a cache outage must not refuse valid keys
        logger.warning("failed-auth counter unreachable; limit not applied", exc_info=True)
        return None
    return _refusal(now) if count >= settings.GATEWAY_AUTH_FAILURES_PER_MINUTE else None


async def auth_failed(address: str) -> TooManyAuthFailures | None:
    """Counts one refused bearer from `address`; returns the 429 to send instead of the 401 once
    the address is past its limit."""
    now = time.time()
    window = int(now // WINDOW_S)
    limit = settings.GATEWAY_AUTH_FAILURES_PER_MINUTE
    try:
        count = await counter_incr(_key(address, window), ttl_s=2 * WINDOW_S)
        if count == 1 and (before := await counter_read(_key(address, window - 1))):
            fields = {"client_address": address, "refused": before, "window": "previous_minute"}
            logger.warning(
                "unauthenticated requests from %s: %d in the minute before",
                address,
                before,
                extra={"gateway_fields": fields},
            )
    except Exception:  # noqa: BLE001
        logger.warning("failed-auth counter unreachable; limit not applied", exc_info=True)
        return None
    if count == limit:
        fields = {"client_address": address, "refused": count, "window": "this_minute", "limit_reached": True}
        logger.warning(
            "unauthenticated requests from %s: limit of %d a minute reached",
            address,
            limit,
            extra={"gateway_fields": fields},
        )
    return _refusal(now) if count > limit else None
