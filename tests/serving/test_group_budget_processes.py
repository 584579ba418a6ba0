"""A group budget holds across server processes (`gateway_project.serve`, two of them, one worker
each): three members' allocations share a group capped at $1; 20 callers with the openai SDK call
until the group refuses them. The spend stays within the cap plus one call's estimate, the
refusals are `group_cost_quota_exceeded`, and every counter equals its records."""

import threading
from decimal import Decimal

import openai
import pytest
from django.core.management import call_command
from django.db.models import Sum

from allocations.groups import group_create, group_members_change
from allocations.models import AuditEvent
from proxy.meters import estimate_chat
from quota.group_budgets import group_spend, group_usage_reconcile
from quota.models import CallRecord, GroupUsageCounter, PriceVersion, Reservation, UsageCounter
from quota.pricing import cost_for
from quota.services import usage_reconcile
from tests.factories import MemberFactory, PriceVersionFactory

pytestmark = pytest.mark.django_db(transaction=True)

CALLERS = 20
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
# $1,000 per 1M tokens: the fake upstream's chat usage (11 input of which 3 cached, 7 output) costs
# $0.018 a call; its estimate (the prompt's estimate + max_tokens) is never below that.
PRICE = Decimal("1000")


def test_a_group_cap_holds_across_two_server_processes_with_20_callers(serve_factory, arrange, fake):
    one, two = serve_factory(1), serve_factory(1)
    world = arrange(one)
    group = group_create(data={"name": "Research", "quota_cost_usd_per_month": "1"})
    members = [MemberFactory(username=f"researcher{n}") for n in range(3)]
    group_members_change(group=group, add=[m.username for m in members])
    allocations = []
    for member in members:
        allocation = world.allocation(upstream_name="fake-sleep-100", member=member, priced=False)
        PriceVersionFactory(model=allocation.model, input_per_1m=PRICE, cached_input_per_1m=PRICE, output_per_1m=PRICE)
        allocations.append(allocation)
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CALLERS)

    def caller(n: int) -> None:
        allocation = allocations[n % 3]
        server = (one, two)[n % 2]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=allocation.plaintext, max_retries=0, timeout=30)
        barrier.wait()
        for _ in range(200):
            try:
                client.chat.completions.create(model=allocation.model.slug, **BODY)
                seen = "ok"
            except openai.PermissionDeniedError as refused:
                seen = refused.body["code"] if isinstance(refused.body, dict) else "?"
            except openai.RateLimitError as busy:
                seen = busy.body["code"] if isinstance(busy.body, dict) else "?"
            with lock:
                outcomes.append(seen)
            if seen not in ("ok", "quota_busy"):
                return

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Every caller ended on the group's refusal; nothing else went wrong.
    assert outcomes.count("group_cost_quota_exceeded") == CALLERS, outcomes
    assert set(outcomes) <= {"ok", "quota_busy", "group_cost_quota_exceeded"}, outcomes
    admitted = outcomes.count("ok")
    records = CallRecord.objects.filter(allocation__in=allocations)
    assert records.filter(outcome="success").count() == admitted
    assert records.filter(outcome="rejected_group_cost_quota_exceeded").count() == CALLERS
    assert not Reservation.objects.exists()

    # Spend: within the cap plus one call's estimate, and at the cap (the callers used it all).
    price = PriceVersion.objects.filter(model=allocations[0].model).get()
    one_estimate = cost_for(price, estimate_chat({"model": "m", **BODY}))
    spent = records.aggregate(s=Sum("cost_usd"))["s"]
    assert spent == Decimal("0.018") * admitted
    assert Decimal("1") <= spent <= Decimal("1") + one_estimate, (spent, one_estimate)

    # The group counter, the allocations' counters and the records agree, before and after the command.
    counter = GroupUsageCounter.objects.get(group=group)
    assert (counter.cost_used, counter.calls, counter.cost_reserved, counter.tokens_reserved) == (
        spent,
        admitted,
        0,
        0,
    )
    assert group_spend(group_ids=[group.pk])[str(group.pk)].cost_used == spent
    assert sum(UsageCounter.objects.filter(allocation__in=allocations).values_list("cost_used", flat=True)) == spent
    call_command("reconcile_usage")
    assert group_usage_reconcile() == [] and usage_reconcile() == []
    assert not AuditEvent.objects.filter(action__in=["usage_reconciled", "group_usage_reconciled"]).exists()
    assert {str(g) for r in records.filter(outcome="success") for g in r.group_ids} == {str(group.pk)}
