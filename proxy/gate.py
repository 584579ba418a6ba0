"""The door of /v1, before the body is read: a request whose bearer is missing, malformed, unknown
or revoked is refused with 401 without reading, parsing or spooling its body and without a call
record (allocations.auth_failures counts it per client address, and refuses an address past its
limit with 429).

A key this process already holds a snapshot of passes with no I/O at all (the preflight checks it
again under the current auth generation); any other key is looked up once on an accounting thread,
which also warms the snapshot the preflight reads.

Under the gateway's server the door runs from the request's head (gateway_project.edge); a bearer
that passed there at once reaches the application with the edge's verdict in its ASGI scope
(`PASSED`: the bearer and its digest), so the handler does not run the door again and the
preflight looks the key up by the digest instead of hashing it once more.
"""

import hmac
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
# The scope key of the edge's verdict: (bearer, digest). A scope's keys are the server's: a client's
# headers arrive under "headers", so no request can set this one.
PASSED = "gateway.door_passed"


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


def held(key: str | None) -> str | None:
    """The digest of a key this process holds a snapshot of (it passes the door with no I/O), else None."""
    return None if key is None else key_scope_held(key)


def passes_at_once(key: str | None) -> bool:
    return held(key) is not None


def digest_carried(plaintext: str, passed: tuple[str, str] | None) -> str:
    """The digest the edge computed for this very bearer, else "" (the preflight hashes it). The
    bearers are compared in constant time: the one the view read and the edge's may differ (a
    request with two Authorization headers), and a secret is never compared with `==`."""
    if passed is None or not plaintext or not hmac.compare_digest(passed[0], plaintext):
        return ""
    return passed[1]


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
