"""What a failed upstream attempt leaves behind (SPEC 3, failover): the deployment cools down
across processes (quota.routing), or, when the provider refused the gateway's credentials, is taken
out until an admin re-enables it (the admin alert follows from its audit event, notifications);
and the attempt is counted per deployment. The call keeps its one record."""

import logging

from allocations.deployments import deployment_take_out
from ops import observe
from quota import routing
from quota.ledger import threads

from . import accounting

logger = logging.getLogger(__name__)
AUTH_REFUSED = (401, 403)
TAKEN_OUT = "the provider refused the gateway's credentials ({status})"


def moves(status: int) -> bool:
    """Whether an upstream status moves the call to the next deployment (other 4xx are relayed)."""
    return status == 429 or status >= 500 or status in AUTH_REFUSED


async def attempt_failed(call: accounting.Call, *, reason: str, retry_after: str | None) -> None:
    entry = call.entry
    deployment_id = entry.deployment_id if entry is not None else None
    observe.attempt_failed(deployment_id=deployment_id, reason=reason)
    if deployment_id is None:
        return
    if reason.isdigit() and int(reason) in AUTH_REFUSED:
        await _take_out(deployment_id, status=int(reason))
        return
    await routing.cool_down(deployment_id, seconds=routing.cooldown_seconds(retry_after))


async def _take_out(deployment_id: str, *, status: int) -> None:
    try:
        await threads.run(deployment_take_out, deployment_id=deployment_id, reason=TAKEN_OUT.format(status=status))
    except Exception:  # noqa: BLE001 - the call goes on to the next deployment whatever happens here
        logger.exception("deployment %s could not be taken out", deployment_id)
    # Until the change is seen (the auth generation moves once it commits), other calls avoid it.
    await routing.cool_down(deployment_id, seconds=routing.cooldown_seconds(None))
