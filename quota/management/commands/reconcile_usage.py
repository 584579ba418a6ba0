"""`manage.py reconcile_usage [--fix]`: this period's usage counters against the call records."""

from typing import Any

from django.core.management.base import CommandParser
from django.utils import timezone

from allocations.management.base import AuditedCommand
from allocations.models import Allocation, Group
from quota.group_budgets import group_usage_reconcile
from quota.periods import period_start_date
from quota.services import usage_reconcile


class Command(AuditedCommand):
    help = (
        "Compare this month's usage counters (allocations and groups) with the sum of the call records;"
        " --fix rewrites the counters."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--fix", action="store_true", help="rewrite drifted counters from the records (audited)")

    def handle(self, *args: Any, fix: bool = False, **options: Any) -> None:
        now = timezone.now()
        self.stdout.write(f"Summing call records of the period starting {period_start_date(now):%Y-%m-%d} …")
        drifts = usage_reconcile(now=now, fix=fix)
        labels = {
            a.pk: f"{a.member.username} / {a.model.slug}"
            for a in Allocation.objects.filter(pk__in=[d.allocation_id for d in drifts]).select_related(
                "member", "model"
            )
        }
        for number, d in enumerate(sorted(drifts, key=lambda d: str(d.allocation_id)), start=1):
            self.stdout.write(
                f"[{number}/{len(drifts)}] allocation {d.allocation_id} ({labels.get(d.allocation_id, '?')}): "
                f"tokens counter {d.counter_tokens} vs records {d.record_tokens} "
                f"(drift {d.counter_tokens - d.record_tokens:+d}); "
                f"cost counter {d.counter_cost} vs records {d.record_cost} (drift {d.counter_cost - d.record_cost:+})"
            )
        self.stdout.write("Summing the call records of each group …")
        group_drifts = group_usage_reconcile(now=now, fix=fix)
        slugs = dict(Group.objects.filter(pk__in=[d.group_id for d in group_drifts]).values_list("pk", "slug"))
        for number, g in enumerate(sorted(group_drifts, key=lambda d: str(d.group_id)), start=1):
            self.stdout.write(
                f"[{number}/{len(group_drifts)}] group {g.group_id} ({slugs.get(g.group_id, 'deleted')}): "
                f"tokens counter {g.counter_tokens} vs records {g.record_tokens} "
                f"(drift {g.counter_tokens - g.record_tokens:+d}); "
                f"cost counter {g.counter_cost} vs records {g.record_cost} (drift {g.counter_cost - g.record_cost:+})"
            )
        total = len(drifts) + len(group_drifts)
        if not total:
            self.stdout.write("No drift: every counter matches its call records.")
        elif fix:
            self.stdout.write(
                f"Fixed {total} counter(s) from the call records "
                "(audited as usage_reconciled / group_usage_reconciled)."
            )
        else:
            self.stdout.write(f"{total} counter(s) drifted; run with --fix to rewrite them from the records.")
