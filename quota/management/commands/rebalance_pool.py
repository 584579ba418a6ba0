"""manage.py rebalance_pool [--dry-run]: plans (and applies) the adaptive token pool, printing a table."""

import uuid
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from allocations.management.base import AuditedCommand
from quota.pool import PoolState, RebalanceRefused, pool_plan, pool_rebalance, pool_state
from quota.pool_models import RebalanceLog


class Command(AuditedCommand):
    help = "Rebalance the adaptive token pool from last period's usage (--dry-run prints the plan only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Print the plan; write nothing.")

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        now = timezone.now()
        state = pool_state(now=now)
        self.stdout.write(
            f"T={state.total} floor={state.floor} reserved={state.reserved} distributable={state.distributable} "
            f"pool={len(state.members)} usage period={state.usage_period_start:%Y-%m} total usage={state.total_usage}"
        )
        if dry_run:
            try:
                shares = pool_plan(state)
            except RebalanceRefused as exc:
                raise CommandError(f"refused: {exc.message}") from exc
            self._table(state, [(s.allocation_id, s.usage, s.quota, s.reason) for s in shares])
            self.stdout.write("dry run: nothing written")
            return
        result = pool_rebalance(trigger=RebalanceLog.Trigger.COMMAND, now=now)
        assert result.log is not None, "only a scheduled run (with a period key) can be a duplicate without a log"
        if result.refused:
            raise CommandError(f"refused (audited, log {result.log.pk}): {result.refused}")
        rows = result.log.entries.order_by("allocation_id").values_list(
            "allocation_id", "usage", "quota_after", "reason"
        )
        self._table(state, list(rows))
        self.stdout.write(self.style.SUCCESS(f"applied: rebalance log {result.log.pk}, skipped {result.log.skipped}"))

    def _table(self, state: PoolState, rows: list[tuple[uuid.UUID, int, int | None, str]]) -> None:
        names = {a.pk: (a.member.username, a.model.slug, a.quota_tokens_per_month) for a in state.members}
        header = f"{'allocation':36}  {'member':16}  {'model':24}  {'usage':>14}  {'before':>14}  {'after':>14}  reason"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for allocation_id, usage, after, reason in rows:
            member, model, before = names.get(allocation_id, ("?", "?", None))
            before_text = "unlimited" if before is None else str(before)
            cells = f"{allocation_id!s:36}  {member[:16]:16}  {model[:24]:24}  {usage:>14}  {before_text:>14}"
            self.stdout.write(f"{cells}  {after!s:>14}  {reason}")
