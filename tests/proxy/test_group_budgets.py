"""Group budgets through `/v1` (SPEC 10): a member in a capped group is admitted on the event loop in
the same two statements as any warm call (the group's reservation rides in the admission), and a
group at its cap refuses with `group_cost_quota_exceeded` / `group_quota_exceeded` and its record."""

from decimal import Decimal

import openai
import pytest

from allocations.groups import group_create, group_members_change, group_update
from quota.models import GroupUsageCounter, Reservation

from .conftest import assert_settled_once, chat_call, record_of


def _group(member, **caps):
    group = group_create(data={"name": "Research", "slug": "research", **caps})
    group_members_change(group=group, add=[member.username])
    return group


def test_a_warm_call_of_a_member_in_a_capped_group_is_still_two_statements(world, thread_steps, loop_statements):
    allocation = world.allocation(cost=Decimal("5"))
    group = _group(allocation.member, quota_cost_usd_per_month="5", quota_tokens_per_month=10**6)
    chat_call(world, allocation, "grp-1")  # the first call fills the caches and makes the group's counter
    thread_steps.clear()
    loop_statements.clear()
    chat_call(world, allocation, "grp-2")
    assert thread_steps == []
    assert len(loop_statements) == 2  # no round trip of its own for the group
    # One capped group: one guarded upsert of its counter, no row lock before it; the settlement
    # upserts the group's usage.
    admission, settlement = loop_statements
    assert "WITH h AS (INSERT INTO quota_groupusagecounter" in admission and "FOR UPDATE" not in admission
    assert "INSERT INTO quota_groupusagecounter" in settlement
    record = assert_settled_once(allocation, "grp-2")
    assert [str(g) for g in record.group_ids] == [str(group.pk)]
    counter = GroupUsageCounter.objects.get(group=group)
    assert (counter.calls, counter.cost_used, counter.cost_reserved, counter.tokens_reserved) == (
        2,
        2 * record.cost_usd,
        0,
        0,
    )


def test_a_group_at_its_cost_cap_refuses_with_its_name_and_figures(world, django_capture_on_commit_callbacks):
    allocation = world.allocation(cost=Decimal("5"))
    group = _group(allocation.member, quota_cost_usd_per_month="0.00001")
    chat_call(world, allocation, "gcap-1")  # $0.0000235: over the group's cap, not the allocation's
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat_call(world, allocation, "gcap-2")
    error = refused.value.body
    assert error["code"] == "group_cost_quota_exceeded"
    assert "research" in error["message"] and "$0.0000235 / $0.00001" in error["message"]
    record = record_of("gcap-2")
    assert (record.outcome, record.status_code) == ("rejected_group_cost_quota_exceeded", 403)
    assert not Reservation.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        group_update(group=group, changes={"quota_cost_usd_per_month": None, "quota_tokens_per_month": 10})
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat_call(world, allocation, "gcap-3")  # the new caps are read at once (the snapshot reloads)
    assert refused.value.body["code"] == "group_quota_exceeded"
    assert record_of("gcap-3").outcome == "rejected_group_quota_exceeded"
