"""The realtime relay's wire vocabulary, in one place: which WebSocket close code a refusal gets,
and how a session ended by the watch is recorded (SPEC 6). The errors and outcomes themselves are
the call path's (quota.exceptions, quota.admission, quota.models.Outcome / CloseReason)."""

from enum import IntEnum

from allocations.exceptions import (
    AllocationPaused,
    AllocationQuarantined,
    AllocationRevoked,
    GatewayError,
    ModelForbidden,
    Unauthorized,
)
from quota.exceptions import (
    CostQuotaExceeded,
    GroupCostQuotaExceeded,
    GroupQuotaExceeded,
    ModelKindMismatch,
    QuotaExceeded,
    RequestTooLarge,
)
from quota.models import CloseReason


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TLS_FAILED = 1015


_REFUSAL_CODES: dict[type[GatewayError], CloseCode] = {
    ModelKindMismatch: CloseCode.UNSUPPORTED,
    RequestTooLarge: CloseCode.TOO_BIG,
}

# Why the watch ended a session → the record's close reason (the outcome is the refusal's).
_WATCH_REASONS: dict[type[GatewayError], CloseReason] = {
    Unauthorized: CloseReason.REVOKED,
    AllocationRevoked: CloseReason.REVOKED,
    AllocationPaused: CloseReason.REVOKED,
    AllocationQuarantined: CloseReason.REVOKED,
    ModelForbidden: CloseReason.REVOKED,  # the member lost the model (a group or its access changed)
    CostQuotaExceeded: CloseReason.COST_EXCEEDED,
    QuotaExceeded: CloseReason.QUOTA_EXCEEDED,
    GroupCostQuotaExceeded: CloseReason.COST_EXCEEDED,
    GroupQuotaExceeded: CloseReason.QUOTA_EXCEEDED,
}


def close_code_for(error: GatewayError) -> CloseCode:
    """A refused handshake closes 1008 with the error code as its reason, but for two kinds."""
    return _REFUSAL_CODES.get(type(error), CloseCode.POLICY)


def watch_close_reason(error: GatewayError) -> CloseReason:
    return _WATCH_REASONS[type(error)]
