"""The base of the gateway's error vocabulary and its generic kinds. Each carries the contract's
error code, HTTP status and OpenAI error type; every interface maps them to its own wire form in
exactly one place (lib.api_errors for the JSON APIs). The domain errors (allocations.exceptions,
quota.exceptions) subclass these."""


class GatewayError(Exception):
    code = "gateway_error"
    status = 500
    type = "api_error"

    def __init__(self, message: str = "", *, fields: dict | None = None) -> None:
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
