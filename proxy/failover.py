"""A failed upstream attempt of a /v1 call (SPEC 3, failover): counted per deployment, and left to
quota.routing (cooldown shared by every process, or the deployment taken out for a 401/403). The
call keeps its one record."""

from ops import observe
from quota import routing

from . import accounting

moves = routing.moves


async def attempt_failed(call: accounting.Call, *, reason: str, retry_after: str | None) -> None:
    entry = call.entry
    deployment_id = entry.deployment_id if entry is not None else None
    observe.attempt_failed(deployment_id=deployment_id, reason=reason)
    status = int(reason) if reason.isdigit() else None
    await routing.attempt_failed(deployment_id, status=status, retry_after=retry_after)
