"""Which deployment serves a call, and what a failed attempt leaves behind (SPEC 3, routing and
failover).

Order: the deployments with a weight, best priority first, each priority's in a weighted random
order (drawn without replacement, so the second choice is weighted too); then those of weight 0
(they serve only when no weighted one can). A deployment cooling down moves to the end: it is
tried only when every other one failed or is over its limit, so a model whose every deployment
cools down still tries them rather than refusing outright.

Cooldowns are Redis keys with an expiry (`gw:cooldown:<deployment id>`), set by the process that
saw the failure and read by every process. A model with one deployment never reads them (there is
nothing to move to), and one without limits takes no rate-limit round trip: its warm call costs
what it did before deployments existed. A model with several reads its cooldowns in one pipelined
round trip. Redis unreachable: no cooldowns are known and the order stays weighted.
"""

import dataclasses
import email.utils
import logging
import math
import random
import time
from collections.abc import Iterable

from django.conf import settings
from redis.exceptions import RedisError

from allocations.access import DeploymentInfo, ScopedAllocation
from allocations.deployments import deployment_take_out
from lib.cache import shared_get_many, shared_set

from . import ratelimit
from .ledger import threads

logger = logging.getLogger(__name__)
COOLDOWN_PREFIX = "gw:cooldown:"
MAX_COOLDOWN_S = 3600
AUTH_REFUSED = (401, 403)
TAKEN_OUT = "the provider refused the gateway's credentials ({status})"
_random = random.Random()  # noqa: S311 - load spreading, not security


def weighted_order(deployments: Iterable[DeploymentInfo], *, rng: random.Random = _random) -> list[DeploymentInfo]:
    groups: dict[int, list[DeploymentInfo]] = {}
    for deployment in deployments:
        if deployment.weight > 0:
            groups.setdefault(deployment.priority, []).append(deployment)
    ordered: list[DeploymentInfo] = []
    for priority in sorted(groups):
        group = groups[priority]
        total = sum(d.weight for d in group)
        while group:
            point = rng.random() * total
            index = 0
            for index, deployment in enumerate(group):  # noqa: B007 - the index is the draw
                point -= deployment.weight
                if point < 0:
                    break
            chosen = group.pop(index)
            total -= chosen.weight
            ordered.append(chosen)
    ordered.extend(sorted((d for d in deployments if d.weight <= 0), key=lambda d: d.priority))
    return ordered


async def plan(entry: ScopedAllocation) -> list[DeploymentInfo]:
    """The deployments to try, in order (see the module's docstring)."""
    deployments = entry.deployments
    if len(deployments) <= 1:
        return list(deployments)
    ordered = weighted_order(deployments)
    cooling = await cooling_down([d.id for d in ordered])
    if not cooling:
        return ordered
    return [d for d in ordered if d.id not in cooling] + [d for d in ordered if d.id in cooling]


async def cooling_down(deployment_ids: list[str]) -> set[str]:
    ids = [i for i in deployment_ids if i]
    if not ids:
        return set()
    try:
        values = await shared_get_many([COOLDOWN_PREFIX + i for i in ids])
    except (OSError, TimeoutError, RedisError) as error:
        logger.warning("cooldowns unreadable (%s): deployments are tried in weighted order", type(error).__name__)
        return set()
    return {i for i, value in zip(ids, values, strict=True) if value is not None}


def cooldown_seconds(retry_after: str | None) -> int:
    """GATEWAY_COOLDOWN_S, or the upstream's Retry-After (seconds or an HTTP date), within an hour."""
    default = max(1, math.ceil(settings.GATEWAY_COOLDOWN_S))
    if not retry_after:
        return default
    try:
        seconds = float(retry_after)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
        except (ValueError, TypeError, IndexError):
            return default
    if math.isnan(seconds):
        return default
    return min(MAX_COOLDOWN_S, max(1, math.ceil(seconds)))


async def cool_down(deployment_id: str | None, *, seconds: int) -> None:
    if not deployment_id:
        return
    try:
        await shared_set(COOLDOWN_PREFIX + deployment_id, str(seconds), ttl_s=seconds)
    except (OSError, TimeoutError, RedisError) as error:
        logger.warning("cooldown not shared (%s): Redis did not answer", type(error).__name__)


async def limit_take(deployment: DeploymentInfo, *, tokens: int) -> ratelimit.Ticket | None | bool:
    """The deployment's own rpm/tpm, taken: its ticket (to settle the tokens with), True when not
    enforced (no limit, or Redis did not answer: fail open), False when it is over a limit."""
    if not deployment.limits:
        return True
    decision, ticket = await ratelimit.admit_async(deployment.limits, tokens=tokens, count=True, hold=False)
    if not decision.allowed:
        return False
    return ticket if ticket is not None else True


def routed(entry: ScopedAllocation, deployment: DeploymentInfo) -> ScopedAllocation:
    """The call's entry as served by `deployment` (the same object when it already is)."""
    if deployment.id == (entry.deployment_id or "") and deployment.upstream_name == entry.upstream_name:
        return entry
    return dataclasses.replace(
        entry, provider=deployment.provider, upstream_name=deployment.upstream_name, deployment_id=deployment.id or None
    )


def moves(status: int) -> bool:
    """Whether an upstream status moves the call to the next deployment (other 4xx are relayed)."""
    return status == 429 or status >= 500 or status in AUTH_REFUSED


async def attempt_failed(deployment_id: str | None, *, status: int | None, retry_after: str | None) -> None:
    """What a failed attempt leaves behind: a cooldown shared by every process or, when the provider
    refused the gateway's credentials, the deployment taken out until an admin re-enables it (its
    audit event brings the admin alert, notifications)."""
    if not deployment_id:
        return
    if status in AUTH_REFUSED:
        try:
            await threads.run(deployment_take_out, deployment_id=deployment_id, reason=TAKEN_OUT.format(status=status))
        except Exception:  # noqa: BLE001 - the call goes on to the next deployment whatever happens here
            logger.exception("deployment %s could not be taken out", deployment_id)
        retry_after = None  # until the change is seen (the auth generation moves at its commit)
    await cool_down(deployment_id, seconds=cooldown_seconds(retry_after))
