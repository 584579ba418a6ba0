from allocations.exceptions import GatewayError


class QuotaExceeded(GatewayError):
    code, status, type = "quota_exceeded", 403, "permission_error"


class CostQuotaExceeded(GatewayError):
    code, status, type = "cost_quota_exceeded", 403, "permission_error"


class QuotaBusy(GatewayError):
    code, status, type = "quota_busy", 429, "rate_limit_error"
    retry_after = 2
