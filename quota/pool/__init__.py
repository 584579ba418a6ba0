"""The adaptive token pool (SPEC section 8): its plan (quota.pool.plan) and applying it
(quota.pool.apply)."""

from .apply import (
    CONFIG_FIELDS,
    RebalanceResult,
    period_key_for,
    pool_apply_plan,
    pool_config_update,
    pool_rebalance,
    pool_rebalance_scheduled,
)
from .plan import (
    BIGINT_MAX,
    SCHEDULE_WINDOW,
    PoolState,
    RebalanceInvariantBroken,
    RebalanceRefused,
    Share,
    log_describe,
    pool_overview,
    pool_plan,
    pool_state,
    pool_suggested_total,
    rebalance,
)

__all__ = [
    "BIGINT_MAX",
    "CONFIG_FIELDS",
    "SCHEDULE_WINDOW",
    "PoolState",
    "RebalanceInvariantBroken",
    "RebalanceRefused",
    "RebalanceResult",
    "Share",
    "log_describe",
    "period_key_for",
    "pool_apply_plan",
    "pool_config_update",
    "pool_overview",
    "pool_plan",
    "pool_rebalance",
    "pool_rebalance_scheduled",
    "pool_state",
    "pool_suggested_total",
    "rebalance",
]
