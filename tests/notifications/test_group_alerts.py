"""Group budget alerts (SPEC 10): near-cap and cap-reached mails go to the group's members, each in
their language and unless they switched that kind off, and to GATEWAY_ALERT_EMAILS; once each per
group, recipient and period."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail

from allocations.models import AuditEvent, Group
from notifications.models import AlertPreference, Notification
from notifications.services import alerts_scan
from quota.models import GroupUsageCounter
from quota.periods import period_start_date
from tests.factories import MemberFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def group(settings):
    settings.GATEWAY_ALERT_EMAILS = ["ops@example.org"]
    group = Group.objects.create(name="Research", slug="research", quota_cost_usd_per_month=Decimal("10"))
    members = [MemberFactory(username="ann"), MemberFactory(username="ben"), MemberFactory(username="cat", email="")]
    group.members.add(*members)
    return group


@pytest.fixture
def scan(django_capture_on_commit_callbacks):
    def run(now=NOW):
        with django_capture_on_commit_callbacks(execute=True):
            return alerts_scan(now=now)

    return run


def spend(group, *, cost="0", tokens=0, now=NOW):
    GroupUsageCounter.objects.update_or_create(
        group=group, period_start=period_start_date(now), defaults={"cost_used": Decimal(cost), "tokens_used": tokens}
    )


def by_recipient() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in mail.outbox:
        for to in message.to:
            found.setdefault(to, []).append(message.subject)
    return found


def test_near_cap_and_cap_reached_go_once_each_to_the_members_and_the_admins(group, scan):
    spend(group, cost="7.9")
    assert scan() == [] and mail.outbox == []
    spend(group, cost="8.5")
    scan()
    scan()
    spend(group, cost="10")
    scan()
    spend(group, cost="12")
    scan()
    expected = ["85% of the group budget used: Research", "Group budget reached: Research"]
    assert by_recipient() == {
        "ann@example.org": expected,
        "ben@example.org": expected,
        "ops@example.org": expected,
    }  # cat has no email
    assert "$8.50 of $10.00" in mail.outbox[0].body and "2026-12-01" in mail.outbox[0].body
    sent = AuditEvent.objects.filter(action="notification_sent", target_id=str(group.pk))
    assert sorted(e.after["kind"] for e in sent) == ["group_cap_reached"] * 3 + ["group_near_cap"] * 3
    assert Notification.objects.filter(kind="group_near_cap").count() == 3


def test_a_member_who_switched_near_cap_off_and_one_who_reads_chinese(group, scan):
    ann, ben = group.members.get(username="ann"), group.members.get(username="ben")
    AlertPreference.objects.create(member=ann, near_cap=False, cap_reached=True)
    AlertPreference.objects.create(member=ben, language="zh-hant")
    spend(group, tokens=0, cost="9")
    scan()
    assert "ann@example.org" not in by_recipient()
    [to_ben] = [m for m in mail.outbox if m.to == ["ben@example.org"]]
    assert "Research" in to_ben.subject and "群組" in to_ben.subject


def test_a_token_budget_alerts_and_an_uncapped_or_zero_budget_does_not(group, scan):
    loose = Group.objects.create(name="Loose", slug="loose")
    blocked = Group.objects.create(name="Blocked", slug="blocked", quota_cost_usd_per_month=Decimal("0"))
    for g in (loose, blocked):
        g.members.add(group.members.get(username="ann"))
        spend(g, cost="100", tokens=10**6)
    assert scan() == []
    Group.objects.filter(pk=group.pk).update(quota_tokens_per_month=1000)
    spend(group, tokens=1000)
    scan()
    assert {m.subject for m in mail.outbox} == {"Group budget reached: Research"}
    assert "1,000 of 1,000" in mail.outbox[0].body
