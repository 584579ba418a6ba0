"""Which member created each Responses API id the gateway relayed, so that a member cannot continue
or read another member's conversation through the organisation's provider key.

One key per relayed response in the shared cache (Redis), kept as long as the provider keeps a
stored response (OpenAI: 30 days). An id the gateway does not know (never relayed, expired, or the
cache lost it) is refused like another member's: 404 `not_found`, failing closed.
"""

import logging

from allocations.exceptions import GatewayUnavailable, NotFound
from lib.cache import shared_get, shared_set

logger = logging.getLogger(__name__)
RETENTION_S = 30 * 24 * 3600
MAX_ID = 200


def _key(response_id: str) -> str:
    return f"gw:response-owner:{response_id}"


async def remember(response_id: object, member_id: str | None) -> None:
    if not isinstance(response_id, str) or not 0 < len(response_id) <= MAX_ID or member_id is None:
        return
    try:
        await shared_set(_key(response_id), member_id, ttl_s=RETENTION_S)
    except Exception:  # noqa: BLE001 - the answer is relayed anyway; its id just cannot be continued
        logger.warning("could not remember the owner of a relayed response", exc_info=True)


async def check(response_id: object, member_id: str | None) -> None:
    """Raises NotFound unless `response_id` was relayed for this member."""
    if response_id is None:
        return
    owner = None
    if isinstance(response_id, str) and 0 < len(response_id) <= MAX_ID:
        try:
            owner = await shared_get(_key(response_id))
        except Exception:  # noqa: BLE001
            logger.warning("could not read the owner of a response id", exc_info=True)
            raise GatewayUnavailable("the gateway could not check previous_response_id; retry") from None
    if owner is None or owner != member_id:
        raise NotFound(f"no response with id '{str(response_id)[:MAX_ID]}' is available to this key")
