"""Django admin for staff: governance (members, providers, models, keys, tokens, audit), allocations
with this month's usage, prices and call records, and the pool and anomaly settings."""

from . import calls, governance, groups, members, pool, selfservice, usage  # noqa: F401  (each module registers its ModelAdmins)
