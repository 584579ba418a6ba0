"""The call path's errors beyond allocations' (caps, admission, the model's kind, the provider, the
request's size). Each carries the contract's code, HTTP status and OpenAI type (SPEC 3); each relay
maps them to its wire form in one place (proxy.views: the HTTP envelope; realtime.close: the
close code), and quota.admission maps every refusal to its record's outcome."""

import datetime as dt

from allocations.exceptions import GatewayError


class QuotaExceeded(GatewayError):
    code, status, type = "quota_exceeded", 403, "permission_error"


class CostQuotaExceeded(GatewayError):
    code, status, type = "cost_quota_exceeded", 403, "permission_error"


class GroupQuotaExceeded(GatewayError):
    """A group of the member has reached its monthly token cap (SPEC 10, group budgets)."""

    code, status, type = "group_quota_exceeded", 403, "permission_error"


class GroupCostQuotaExceeded(GatewayError):
    """A group of the member has reached its monthly cost cap (SPEC 10, group budgets)."""

    code, status, type = "group_cost_quota_exceeded", 403, "permission_error"


class QuotaBusy(GatewayError):
    code, status, type = "quota_busy", 429, "rate_limit_error"
    retry_after = 2


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


def cap_error_named(error: QuotaExceeded | CostQuotaExceeded, *, model: str, resets_at: dt.datetime) -> GatewayError:
    """The same refusal, its message naming the model and when the monthly cap starts again."""
    when = f"{resets_at:%Y-%m-%d} ({resets_at.tzinfo})"
    return type(error)(f"{error.message} for model '{model}'; the cap resets on {when}")


class RateLimited(GatewayError):
    """A rate limit of the allocation or its model (quota.ratelimit); carries the Retry-After and
    x-ratelimit-* headers of the answer."""

    code, status, type = "rate_limited", 429, "rate_limit_error"

    def __init__(self, message: str = "", *, retry_after: int = 1, headers: dict | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers or {}
