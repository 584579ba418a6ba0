import datetime as dt
import os
import socket
import subprocess
import sys
import threading
from decimal import Decimal

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.core import mail
from django.core.mail.backends import locmem
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocations.models import Allocation, AuditEvent
from allocations.services import allocation_quarantine
from notifications import services
from notifications.models import AlertPreference, Kind, Notification
from notifications.services import RESEND_AFTER, SEND_LEASE, alerts_scan, cap_level, notification_send
from quota.models import CallRecord, Outcome, UsageCounter
from quota.periods import period_start_date
from tests.factories import AllocationFactory

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def spend(allocation, *, cost="0", tokens=0, now=NOW):
    UsageCounter.objects.update_or_create(
        allocation=allocation,
        period_start=period_start_date(now),
        defaults={"cost_used": Decimal(cost), "tokens_used": tokens},
    )


@pytest.fixture
def capped(member):
    return AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1.00"), quota_tokens_per_month=1000)


@pytest.fixture
def scan(django_capture_on_commit_callbacks):
    def run(now=NOW):
        with django_capture_on_commit_callbacks(execute=True):
            return alerts_scan(now=now)

    return run


def test_it_mails_a_member_once_when_spend_crosses_the_near_cap_ratio(capped, scan):
    spend(capped, cost="0.79")
    assert scan() == [] and mail.outbox == []

    spend(capped, cost="0.85")
    scan()
    scan()

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [capped.member.email]
    assert capped.model.slug in message.subject and "85%" in message.subject
    assert "$0.85 of $1.00" in message.body and "2026-12-01" in message.body and "/portal/" in message.body
    sent = AuditEvent.objects.get(action="notification_sent")
    assert sent.target_id == str(capped.pk) and sent.after["kind"] == "near_cap"


def test_it_mails_once_more_when_the_cap_is_reached_and_never_again_that_month(capped, scan):
    spend(capped, tokens=850)
    scan()
    spend(capped, tokens=1000)
    scan()
    spend(capped, tokens=1500, cost="2")
    scan()

    assert [m.subject.split(":")[0] for m in mail.outbox] == ["85% of your cap used", "Cap reached"]
    assert "1,000 of 1,000" in mail.outbox[1].body
    assert Notification.objects.filter(sent_at__isnull=False).count() == 2


def test_a_new_month_mails_again(capped, scan):
    spend(capped, cost="0.9")
    scan()
    december = NOW + dt.timedelta(days=15)
    spend(capped, cost="0.9", now=december)
    scan(december)
    assert len(mail.outbox) == 2


def test_a_member_who_switched_a_kind_off_gets_only_the_other(capped, scan):
    AlertPreference.objects.create(member=capped.member, near_cap=False, cap_reached=True)
    spend(capped, cost="0.9")
    scan()
    assert mail.outbox == []
    spend(capped, cost="1.2")
    scan()
    assert len(mail.outbox) == 1 and mail.outbox[0].subject.startswith("Cap reached")


def test_the_mail_is_in_the_members_language(capped, scan):
    AlertPreference.objects.create(member=capped.member, language="zh-hant")
    spend(capped, cost="1.5")
    scan()
    assert "已達上限" in mail.outbox[0].subject
    assert "2026-12-01" in mail.outbox[0].body


def test_revoked_uncapped_or_zero_capped_allocations_are_not_alerted(member, scan):
    revoked = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1"), status=Allocation.Status.REVOKED)
    uncapped = AllocationFactory(member=member)
    blocked = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("0"))
    for allocation in (revoked, uncapped, blocked):
        spend(allocation, cost="5", tokens=10**6)
    assert scan() == [] and mail.outbox == []


def _records(allocation, *, status, count, now=NOW):
    CallRecord.objects.bulk_create(
        CallRecord(
            request_id=f"r{status}-{i}",
            allocation=allocation,
            model=allocation.model,
            endpoint="/v1/chat/completions",
            started_at=now - dt.timedelta(minutes=1),
            status_code=status,
            outcome=Outcome.UPSTREAM_ERROR,
        )
        for i in range(count)
    )


def test_admins_are_told_once_per_window_about_a_provider_refusing_the_key(allocation, scan, settings):
    settings.GATEWAY_ALERT_EMAILS = ["ops@example.org"]
    _records(allocation, status=401, count=2)
    scan()
    scan(NOW + dt.timedelta(minutes=2))
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.org"]
    assert allocation.model.provider.name in mail.outbox[0].subject
    assert Notification.objects.get().kind == Kind.PROVIDER_AUTH


def test_upstream_error_bursts_alert_only_past_the_threshold(allocation, scan, settings):
    settings.GATEWAY_ALERT_EMAILS = ["ops@example.org"]
    settings.GATEWAY_ALERT_UPSTREAM_ERRORS = 5
    _records(allocation, status=502, count=4)
    scan()
    assert mail.outbox == []
    _records(allocation, status=504, count=1)
    scan()
    assert len(mail.outbox) == 1 and "5 in 5 minutes" in mail.outbox[0].subject


def test_admins_are_told_about_a_quarantine(allocation, scan, settings):
    settings.GATEWAY_ALERT_EMAILS = ["ops@example.org", "lead@example.org"]
    allocation_quarantine(allocation=allocation, reason="test burst")
    scan(timezone.now())
    scan(timezone.now())
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.org", "lead@example.org"]
    assert str(allocation.pk) in mail.outbox[0].body


def test_no_admin_alert_without_addresses(allocation, scan, settings):
    settings.GATEWAY_ALERT_EMAILS = []
    _records(allocation, status=403, count=3)
    allocation_quarantine(allocation=allocation, reason="x")
    assert scan(timezone.now()) == [] and mail.outbox == []


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope)
        return "250 OK"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_two_processes_scanning_at_once_send_one_mail_through_a_real_smtp_server(member):
    allocation = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1"))
    spend(allocation, cost="1.0", now=timezone.now())
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        db = connection.settings_dict
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTEST_XDIST_WORKER")},
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "EMAIL_URL": f"smtp://127.0.0.1:{controller.port}",
            "DEBUG": "true",
        }
        command = [sys.executable, "manage.py", "alerts_scan"]
        scanners = [subprocess.Popen(command, env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE) for _ in range(2)]
        outputs = sorted(p.communicate(timeout=60)[0].decode().strip() for p in scanners)
    finally:
        controller.stop()
    assert [p.returncode for p in scanners] == [0, 0]
    assert outputs == ["0 notification(s) claimed", "1 notification(s) claimed"]
    assert len(inbox.messages) == 1
    assert inbox.messages[0].rcpt_tos == [member.email]
    assert b"Cap reached" in inbox.messages[0].content
    assert Notification.objects.get().sent_at is not None
    assert AuditEvent.objects.filter(action="notification_sent").count() == 1


def _stale(allocation, *, count, now):
    """Claimed mails whose send was lost: unsent for longer than the scan waits before resending."""
    return [
        Notification.objects.create(
            kind=Kind.NEAR_CAP,
            scope=f"{allocation.pk}:stale-{i}",
            member=allocation.member,
            recipients=[allocation.member.email],
            subject=f"stale {i}",
            body="body",
            target_type="allocation",
            target_id=str(allocation.pk),
            created_at=now - RESEND_AFTER - dt.timedelta(minutes=1),
        )
        for i in range(count)
    ]


class OverlappingBackend(locmem.EmailBackend):
    """The locmem backend, whose first send runs `overlap` to its end in another thread (its own
    database connection) before it delivers: another worker's scan or send while this one is slow."""

    overlap = None

    def send_messages(self, messages):
        overlap, OverlappingBackend.overlap = OverlappingBackend.overlap, None
        if overlap is not None:
            worker = threading.Thread(target=_in_own_connection, args=(overlap,))
            worker.start()
            worker.join()
        return super().send_messages(messages)


def _in_own_connection(work):
    try:
        work()
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_scan_resending_while_another_sends_mails_each_stale_alert_once(capped, settings):
    settings.EMAIL_BACKEND = "tests.notifications.test_alerts.OverlappingBackend"
    now = timezone.now()
    stale = _stale(capped, count=3, now=now)
    OverlappingBackend.overlap = lambda: alerts_scan(now=now)

    alerts_scan(now=now)

    assert sorted(m.subject for m in mail.outbox) == ["stale 0", "stale 1", "stale 2"]
    assert Notification.objects.filter(pk__in=[n.pk for n in stale], sent_at__isnull=True).count() == 0
    assert AuditEvent.objects.filter(action="notification_sent").count() == 3


@pytest.mark.django_db(transaction=True)
def test_two_sends_of_one_mail_at_once_mail_it_once(capped, settings):
    settings.EMAIL_BACKEND = "tests.notifications.test_alerts.OverlappingBackend"
    [notification] = _stale(capped, count=1, now=timezone.now())
    results = []
    OverlappingBackend.overlap = lambda: results.append(notification_send(notification_id=notification.pk))

    results.append(notification_send(notification_id=notification.pk))

    assert results == [False, True] and len(mail.outbox) == 1


def test_a_send_presumed_dead_is_sent_again_after_its_lease(capped):
    now = timezone.now()
    [notification] = _stale(capped, count=1, now=now)
    Notification.objects.filter(pk=notification.pk).update(send_claimed_at=now - dt.timedelta(minutes=1))
    assert notification_send(notification_id=notification.pk, now=now) is False
    assert notification_send(notification_id=notification.pk, now=now + SEND_LEASE) is True
    assert len(mail.outbox) == 1


class RefusingBackend(locmem.EmailBackend):
    def send_messages(self, messages):
        raise ConnectionRefusedError("the mail server is down")


def test_a_failed_send_gives_its_claim_back_for_the_retry(capped, settings):
    [notification] = _stale(capped, count=1, now=timezone.now())
    settings.EMAIL_BACKEND = "tests.notifications.test_alerts.RefusingBackend"
    with pytest.raises(ConnectionRefusedError):
        notification_send(notification_id=notification.pk)
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert notification_send(notification_id=notification.pk) is True
    assert len(mail.outbox) == 1


def _scan_queries(allocations, *, settings):
    """The queries of a scan once every alert that is due has been claimed."""
    settings.GATEWAY_ALERT_EMAILS = ["ops@example.org"]
    now = timezone.now()
    for allocation in allocations:
        spend(allocation, cost="0.9", now=now)
        allocation_quarantine(allocation=allocation, reason="burst")
        _records(allocation, status=401, count=1, now=now)
    alerts_scan(now=now)
    with CaptureQueriesContext(connection) as queries:
        assert alerts_scan(now=now) == []
    return len(queries)


def test_the_scans_queries_do_not_grow_with_the_allocations(member, settings):
    few = _scan_queries([AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1"))], settings=settings)
    many = [AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1")) for _ in range(50)]
    assert _scan_queries(many, settings=settings) == few


def test_allocations_below_the_ratio_are_left_in_the_database(member, monkeypatch):
    now = timezone.now()
    near = AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1"))
    spend(near, cost="0.8", now=now)
    for _ in range(5):
        spend(AllocationFactory(member=member, quota_cost_usd_per_month=Decimal("1")), cost="0.79", now=now)
    read = []
    monkeypatch.setattr(
        services,
        "cap_level",
        lambda *, counter, allocation: read.append(allocation) or cap_level(counter=counter, allocation=allocation),
    )
    [claimed] = services.member_alerts_scan(now=now)
    assert read == [near] and claimed.target_id == str(near.pk)
