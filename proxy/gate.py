"""The door of /v1, before the body is read: a request whose bearer is missing, malformed, unknown
or revoked is refused with 401 without reading, parsing or spooling its body and without a call
record (allocations.auth_failures counts it per client address, and refuses an address past its
limit with 429).

A key this process already holds a snapshot of passes with no I/O at all (the preflight checks it
again under the current auth generation); any other key is looked up once on an accounting thread,
which also warms the snapshot the preflight reads.
"""

import logging

from allocations.access import key_scope, key_scope_held
from allocations.auth_failures import auth_blocked, auth_failed
from allocations.exceptions import GatewayError, Unauthorized
from lib.asgi import Scope
from lib.http import client_address
from ops import observe
from quota.ledger import threads

from . import accounting
from .registry import ENDPOINTS

logger = logging.getLogger(__name__)
MALFORMED = "missing or malformed bearer key: send 'Authorization: Bearer <key>'"


def header(scope: Scope, name: bytes) -> str:
    return next((v for k, v in scope.get("headers", ()) if k == name), b"").decode("latin1")


def address_of(scope: Scope) -> str:
    client = scope.get("client") or ("", 0)
    found = client_address(remote=client[0] or "", forwarded_for=header(scope, b"x-forwarded-for"))
    return found or "unknown"


def bearer(authorization: str) -> str | None:
    """The key of a well-formed `Authorization: Bearer <key>`, else None."""
    match = accounting.BEARER.fullmatch(authorization)
    return None if match is None else match.group(1)


def passes_at_once(key: str | None) -> bool:
    """A key this process holds a snapshot of: it passes the door with no I/O."""
    return key is not None and key_scope_held(key)


async def refusal(scope: Scope) -> GatewayError | None:
    """None when the request may go on to the view; else the error to answer with (counted in the
    metrics as a refusal of the endpoint, without a call record)."""
    try:
        error = await _refusal(scope)
    except Exception:  # noqa: BLE001 - the store failing here: the preflight decides, with its retries
        logger.warning("the door could not check a bearer; left to the preflight", exc_info=True)
        return None
    if error is not None:
        count_refused(scope.get("path", ""), error)
    return error


def count_refused(path: str, error: GatewayError) -> None:
    """A /v1 request refused before its body was read (here, or by the server from its head)."""
    name = path.removeprefix("/v1/").rstrip("/").replace("/", ".")
    observe.door_refused(path=name if name in ENDPOINTS else "other", status=error.status, code=error.code)


async def _refusal(scope: Scope) -> GatewayError | None:
    key = bearer(header(scope, b"authorization"))
    if passes_at_once(key):
        return None
    address = address_of(scope)
    failure: GatewayError = Unauthorized(MALFORMED)
    if key is not None:
        blocked = await auth_blocked(address)
        if blocked is not None:
            return blocked
        try:
            await threads.run(key_scope, plaintext=key)
            return None
        except Unauthorized as error:
            failure = error
        except GatewayError as error:  # the store is down: 503, not a failed authentication
            return error
    return await auth_failed(address) or failure
