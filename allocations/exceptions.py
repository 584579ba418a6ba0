"""Domain errors. Each carries the contract's error code, HTTP status and OpenAI error type;
every interface maps them to its own wire form in exactly one place. The base and the generic
kinds live in lib.errors and are named here too, where every caller imports them from."""

from lib.errors import BadRequest, Conflict, Forbidden, GatewayError, NotFound, Unauthorized  # noqa: F401


class InvalidTransition(Conflict):
    code = "invalid_transition"


class ModelMismatch(GatewayError):
    code, status, type = "model_mismatch", 403, "permission_error"


class AllocationRevoked(GatewayError):
    code, status, type = "allocation_revoked", 403, "permission_error"


class AllocationQuarantined(GatewayError):
    code, status, type = "allocation_quarantined", 403, "permission_error"


class AllocationPaused(GatewayError):
    code, status, type = "allocation_paused", 403, "permission_error"


class ScopeForbidden(Forbidden):
    code = "scope_forbidden"


class ScopeConflict(Conflict):
    code = "scope_conflict"


class GatewayUnavailable(GatewayError):
    """The gateway's own store (PostgreSQL) cannot be reached, even after a retry on a fresh
    connection: the call was not admitted (nothing went upstream) and may be retried."""

    code, status, type = "gateway_unavailable", 503, "api_error"
    retry_after = 2


class TooManyAuthFailures(GatewayError):
    """Too many refused bearers from one client address: refused before the key is even looked up."""

    code, status, type = "rate_limited", 429, "rate_limit_error"

    def __init__(self, message: str = "", *, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelForbidden(GatewayError):
    """The member may not use the allocation's model (a group of theirs is denied it, or it is
    restricted to groups they are not in): allocations.model_access."""

    code, status, type = "model_forbidden", 403, "permission_error"
