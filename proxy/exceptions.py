"""Errors only the HTTP relay raises. Each carries the contract's code, HTTP status and OpenAI type
(SPEC 3); proxy.views maps every GatewayError to the one envelope in one place."""

from allocations.exceptions import GatewayError


class RequestTooLarge(GatewayError):
    code, status, type = "request_too_large", 413, "invalid_request_error"


class ModelKindMismatch(GatewayError):
    code, status, type = "model_kind_mismatch", 400, "invalid_request_error"


class ProviderUnavailable(GatewayError):
    code, status, type = "provider_unavailable", 503, "api_error"


class UpstreamError(GatewayError):
    code, status, type = "upstream_error", 502, "api_error"


class UpstreamTimeout(GatewayError):
    code, status, type = "upstream_timeout", 504, "api_error"
