"""Domain errors. Each carries the contract's error code, HTTP status and OpenAI error type;
every interface maps them to its own wire form in exactly one place."""


class GatewayError(Exception):
    code = "gateway_error"
    status = 500
    type = "api_error"

    def __init__(self, message: str = "", *, fields: dict | None = None):
        super().__init__(message or self.code)
        self.message = message or self.code
        self.fields = fields


class BadRequest(GatewayError):
    code, status, type = "bad_request", 400, "invalid_request_error"


class Unauthorized(GatewayError):
    code, status, type = "unauthorized", 401, "authentication_error"


class Forbidden(GatewayError):
    code, status, type = "forbidden", 403, "permission_error"


class NotFound(GatewayError):
    code, status, type = "not_found", 404, "invalid_request_error"


class Conflict(GatewayError):
    code, status, type = "conflict", 409, "invalid_request_error"


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

    def __init__(self, message: str = "", *, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class ModelForbidden(GatewayError):
    """The member may not use the allocation's model (a group of theirs is denied it, or it is
    restricted to groups they are not in): allocations.model_access."""

    code, status, type = "model_forbidden", 403, "permission_error"
