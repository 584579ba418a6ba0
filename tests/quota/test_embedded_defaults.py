"""`make run` uses SQLite: the accounting's raw SQL must work there too, not only on PostgreSQL."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from decimal import Decimal
from django.utils import timezone
from allocations.models import Allocation
from quota.models import CallRecord, UsageCounter
from quota.pricing import Usage
from quota import ledger
from quota.services import price_in_force

allocation = Allocation.objects.get(model__slug="sim/gpt-4o-mini", member__username="demo")
now = timezone.now()
for n in range(2):  # the second admission takes the cached-counter fast path
    admission = ledger.admit(
        allocation_id=str(allocation.pk), token_cap=allocation.quota_tokens_per_month,
        cost_cap=allocation.quota_cost_usd_per_month, est_tokens=100, est_cost=Decimal("0.001"),
        request_id=f"smoke-{n}", now=now,
    )
    ledger.settle(
        admission=admission,
        record={"request_id": f"smoke-{n}", "allocation": allocation, "endpoint": "chat.completions",
                "started_at": now, "outcome": "success", "status_code": 200},
        usage=Usage(input_tokens=10, output_tokens=5),
        price=price_in_force(model_id=allocation.model_id, at=now),
    )
counter = UsageCounter.objects.get(allocation=allocation)
print(CallRecord.objects.count(), counter.tokens_used, counter.tokens_reserved)
"""


def test_the_embedded_sqlite_defaults_admit_and_settle_calls(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "PYTEST_XDIST_WORKER"}}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        subprocess.run(manage + command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    out = subprocess.run(
        manage + ["shell", "-c", SCRIPT], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "2 30 0"
