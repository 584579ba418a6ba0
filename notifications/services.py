"""Spend alerts for members and operational alerts for admins.

A periodic scan (Celery beat, every minute) reads the usage counters and the recent call records,
so nothing is added to the request path. Each mail is claimed by inserting its Notification row
(unique per kind and scope) before it is sent after commit: exactly once across any number of
processes running the scan at the same time. Its sending is claimed too (a conditional UPDATE of
`send_claimed_at`), so a resend of a mail whose send is late and the late send itself never both
mail it.
"""

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, Q
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from allocations.audit import audit_record
from allocations.models import Allocation, AuditEvent, Deployment, Group, Member
from quota.billing import caps
from quota.display import usd
from quota.models import CallRecord, GroupUsageCounter, Outcome, UsageCounter
from quota.overview import near_cap_q
from quota.periods import period_bounds, period_start_date

from .models import ADMIN_KINDS, GROUP_KINDS, MEMBER_KINDS, AlertPreference, Kind, Notification

log = logging.getLogger(__name__)

# Upstream failures are looked for in this trailing window; each provider gets at most one mail of a
# kind per GATEWAY_ALERT_WINDOW_MIN.
ERROR_LOOKBACK = dt.timedelta(minutes=5)
# A claimed mail not sent after this long (its task was lost) is sent again by the next scan.
RESEND_AFTER = dt.timedelta(minutes=5)
# A send that has not marked its mail sent after this long is presumed dead (its worker was lost
# between claiming and marking) and another may send it: far above EMAIL_TIMEOUT.
SEND_LEASE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CapLevel:
    kind: Kind
    metric: str  # "cost" or "tokens"
    used: Decimal | int
    cap: Decimal | int

    @property
    def percent(self) -> int:
        return int(Decimal(self.used) * 100 / Decimal(self.cap))


def cap_level(*, counter: UsageCounter, allocation: Allocation) -> CapLevel | None:
    """The highest alert level either cap has reached; a cap of 0 blocks by design and is not alerted."""
    return _level(
        cost=(counter.cost_used, allocation.quota_cost_usd_per_month),
        tokens=(counter.tokens_used, allocation.quota_tokens_per_month),
        kinds=(Kind.NEAR_CAP, Kind.CAP_REACHED),
    )


def group_cap_level(*, counter: GroupUsageCounter, group: Group) -> CapLevel | None:
    """cap_level for a group's budget, with the group kinds."""
    return _level(
        cost=(counter.cost_used, group.quota_cost_usd_per_month),
        tokens=(counter.tokens_used, group.quota_tokens_per_month),
        kinds=(Kind.GROUP_NEAR_CAP, Kind.GROUP_CAP_REACHED),
    )


def _level(*, cost: tuple, tokens: tuple, kinds: tuple[Kind, Kind]) -> CapLevel | None:
    near_kind, reached_kind = kinds
    found: list[CapLevel] = []
    for metric, (used, cap) in (("cost", cost), ("tokens", tokens)):
        if not cap:
            continue
        if caps.cap_hit(used=used, cap=cap):
            found.append(CapLevel(reached_kind, metric, used, cap))
        elif caps.near_cap(used=used, cap=cap):
            found.append(CapLevel(near_kind, metric, used, cap))
    if not found:
        return None
    return max(found, key=lambda level: (level.kind == reached_kind, Decimal(level.used) / Decimal(level.cap)))


def _claim(*, kind: str, scope: str, defaults: dict) -> Notification | None:
    """Insert the notification's row; only the process whose insert wins gets it back."""
    with transaction.atomic():
        notification, created = Notification.objects.get_or_create(kind=kind, scope=scope, defaults=defaults)
        if not created:
            return None
        transaction.on_commit(lambda: _enqueue(notification.pk))
    return notification


def _enqueue(notification_id: int) -> None:
    from .tasks import notification_send_task

    notification_send_task.delay(notification_id)


def _preference(member: Member) -> AlertPreference | None:
    try:
        return member.alert_preference  # type: ignore[attr-defined]
    except AlertPreference.DoesNotExist:
        return None


def _member_mail(*, member: Member, allocation: Allocation, level: CapLevel, now: dt.datetime) -> tuple[str, str]:
    period_end = period_bounds(now)[1]
    preference = _preference(member)
    language = (preference.language if preference else "") or settings.LANGUAGE_CODE
    with translation.override(language):
        fmt = usd if level.metric == "cost" else (lambda v: f"{int(v):,}")
        context = {
            "member": member,
            "model": allocation.model.slug,
            "allocation": allocation.display_name or allocation.model.slug,
            "reached": level.kind == Kind.CAP_REACHED,
            "metric": _("spend") if level.metric == "cost" else _("tokens"),
            "used": fmt(level.used),
            "cap": fmt(level.cap),
            "percent": level.percent,
            "reset": period_end.date().isoformat(),
            "portal_url": settings.GATEWAY_PUBLIC_URL.rstrip("/") + "/portal/",
        }
        if level.kind == Kind.CAP_REACHED:
            subject = _("Cap reached: %(model)s") % context
        else:
            subject = _("%(percent)s%% of your cap used: %(model)s") % context
        body = render_to_string("notifications/member_alert.txt", context)
    return subject, body


def member_alerts_scan(*, now: dt.datetime) -> list[Notification]:
    """Claim the near-cap and cap-reached mails of this period that are due and not yet claimed."""
    period = period_start_date(now)
    done = set(
        Notification.objects.filter(kind__in=MEMBER_KINDS, scope__endswith=f":{period.isoformat()}").values_list(
            "kind", "scope"
        )
    )
    counters = (
        UsageCounter.objects.filter(period_start=period)
        .exclude(allocation__status=Allocation.Status.REVOKED)
        .filter(
            near_cap_q(),
            Q(allocation__quota_cost_usd_per_month__gt=0) | Q(allocation__quota_tokens_per_month__gt=0),
            allocation__member__is_active=True,
        )
        .exclude(allocation__member__email="")
        .select_related("allocation__member__alert_preference", "allocation__model")
    )
    claimed = []
    for counter in counters.iterator():
        allocation = counter.allocation
        level = cap_level(counter=counter, allocation=allocation)
        if level is None:
            continue
        scope = f"{allocation.pk}:{period.isoformat()}"
        member = allocation.member
        preference = _preference(member)
        if (level.kind, scope) in done or (preference is not None and not preference.wants(level.kind)):
            continue
        subject, body = _member_mail(member=member, allocation=allocation, level=level, now=now)
        notification = _claim(
            kind=level.kind,
            scope=scope,
            defaults={
                "member": member,
                "recipients": [member.email],
                "subject": subject,
                "body": body,
                "figures": {"metric": level.metric, "used": str(level.used), "cap": str(level.cap)},
                "target_type": "allocation",
                "target_id": str(allocation.pk),
                "created_at": now,
            },
        )
        if notification is not None:
            claimed.append(notification)
    return claimed


def _group_mail(*, group: Group, level: CapLevel, now: dt.datetime, language: str) -> tuple[str, str]:
    with translation.override(language):
        fmt = usd if level.metric == "cost" else (lambda v: f"{int(v):,}")
        context = {
            "group": group.name,
            "reached": level.kind == Kind.GROUP_CAP_REACHED,
            "metric": _("spend") if level.metric == "cost" else _("tokens"),
            "used": fmt(level.used),
            "cap": fmt(level.cap),
            "percent": level.percent,
            "reset": period_bounds(now)[1].date().isoformat(),
            "portal_url": settings.GATEWAY_PUBLIC_URL.rstrip("/") + "/portal/",
        }
        if level.kind == Kind.GROUP_CAP_REACHED:
            subject = _("Group budget reached: %(group)s") % context
        else:
            subject = _("%(percent)s%% of the group budget used: %(group)s") % context
        body = render_to_string("notifications/group_alert.txt", context)
    return subject, body


def group_alerts_scan(*, now: dt.datetime) -> list[Notification]:
    """Claim the near-cap and cap-reached mails of each capped group this period: one to each active
    member of the group with an email (in their language, unless they switched that kind off) and
    one to GATEWAY_ALERT_EMAILS. Each is claimed once per group, recipient and period."""
    period = period_start_date(now)
    done = set(
        Notification.objects.filter(kind__in=GROUP_KINDS, scope__endswith=f":{period.isoformat()}").values_list(
            "kind", "scope"
        )
    )
    counters = (
        GroupUsageCounter.objects.filter(period_start=period)
        .filter(
            caps.near_cap_q(used="cost_used", cap="group__quota_cost_usd_per_month")
            | caps.near_cap_q(used="tokens_used", cap="group__quota_tokens_per_month"),
            Q(group__quota_cost_usd_per_month__gt=0) | Q(group__quota_tokens_per_month__gt=0),
        )
        .select_related("group")
    )
    claimed = []
    for counter in counters:
        group = counter.group
        level = group_cap_level(counter=counter, group=group)
        if level is None:
            continue
        figures = {"group": group.slug, "metric": level.metric, "used": str(level.used), "cap": str(level.cap)}
        members = group.members.filter(is_active=True).exclude(email="").select_related("alert_preference")
        recipients: list[tuple[str, Member | None, list[str], str]] = [
            (f"{group.pk}:{m.pk}:{period.isoformat()}", m, [m.email], _language_of(m)) for m in members
        ]
        if settings.GATEWAY_ALERT_EMAILS:
            admins = list(settings.GATEWAY_ALERT_EMAILS)
            recipients.append((f"{group.pk}:admins:{period.isoformat()}", None, admins, settings.LANGUAGE_CODE))
        for scope, member, emails, language in recipients:
            preference = _preference(member) if member is not None else None
            if (level.kind, scope) in done or (preference is not None and not preference.wants(level.kind)):
                continue
            subject, body = _group_mail(group=group, level=level, now=now, language=language)
            notification = _claim(
                kind=level.kind,
                scope=scope,
                defaults={
                    "member": member,
                    "recipients": emails,
                    "subject": subject,
                    "body": body,
                    "figures": figures,
                    "target_type": "group",
                    "target_id": str(group.pk),
                    "created_at": now,
                },
            )
            if notification is not None:
                claimed.append(notification)
    return claimed


def _language_of(member: Member) -> str:
    preference = _preference(member)
    return (preference.language if preference else "") or settings.LANGUAGE_CODE


@dataclass(frozen=True)
class AdminAlert:
    """An admin mail that may be due; `render` builds its subject, body and figures, and is called
    only for a mail not claimed yet."""

    kind: Kind
    scope: str
    target: tuple[str, str]
    render: Callable[[], tuple[str, str, dict]]


def _renderer(subject: str, body: tuple[str, dict], figures: dict) -> Callable[[], tuple[str, str, dict]]:
    return lambda: (subject, render_to_string(*body), figures)


def _admin_claim(*, alert: AdminAlert, now: dt.datetime) -> Notification | None:
    subject, body, figures = alert.render()
    return _claim(
        kind=alert.kind,
        scope=alert.scope,
        defaults={
            "recipients": list(settings.GATEWAY_ALERT_EMAILS),
            "subject": subject,
            "body": body,
            "figures": figures,
            "target_type": alert.target[0],
            "target_id": alert.target[1],
            "created_at": now,
        },
    )


def _window_start(now: dt.datetime) -> str:
    window = settings.GATEWAY_ALERT_WINDOW_MIN * 60
    return dt.datetime.fromtimestamp(now.timestamp() // window * window, tz=dt.UTC).isoformat()


def _quarantine_alerts(now: dt.datetime) -> list[AdminAlert]:
    events = AuditEvent.objects.filter(
        action="allocation_quarantined", created_at__gte=now - dt.timedelta(hours=1)
    ).order_by("created_at")
    return [
        AdminAlert(
            kind=Kind.QUARANTINED,
            scope=f"{event.target_id}:{event.pk}",
            target=("allocation", event.target_id),
            render=_renderer(
                f"Allocation quarantined: {event.target_id}",
                ("notifications/admin_quarantined.txt", {"event": event}),
                {"after": event.after},
            ),
        )
        for event in events
    ]


def _deployment_out_alerts(now: dt.datetime) -> list[AdminAlert]:
    """A deployment the gateway took out because its provider refused the key (its audit event,
    written once per taking out): one mail each, whether or not a call record shows the 401."""
    events = AuditEvent.objects.filter(
        action="deployment_updated", actor__isnull=True, created_at__gte=now - dt.timedelta(hours=1)
    ).order_by("created_at")
    alerts = []
    for event in events:
        after = event.after or {}
        if after.get("active") is not False or not after.get("disabled_reason"):
            continue
        deployment = Deployment.objects.select_related("provider", "model").filter(pk=event.target_id).first()
        label = str(deployment) if deployment else event.target_id
        model = deployment.model.slug if deployment else "?"
        context = {"deployment": label, "model": model, "reason": after["disabled_reason"]}
        subject = f"Deployment {label} of {model} taken out: the provider refused the gateway's key"
        body = ("notifications/admin_deployment_out.txt", context)
        scope = f"deployment:{event.target_id}:{event.pk}"
        alerts.append(AdminAlert(Kind.PROVIDER_AUTH, scope, ("deployment", event.target_id),
                                 _renderer(subject, body, {"reason": after["disabled_reason"]})))  # fmt: skip
    return alerts


def _provider_alerts(now: dt.datetime) -> list[AdminAlert]:
    window, minutes = _window_start(now), int(ERROR_LOOKBACK.total_seconds() // 60)
    threshold = settings.GATEWAY_ALERT_UPSTREAM_ERRORS
    failures = (
        CallRecord.objects.filter(started_at__gte=now - ERROR_LOOKBACK, outcome=Outcome.UPSTREAM_ERROR)
        .values("model__provider_id", "model__provider__name")
        .annotate(
            auth=Count("id", filter=Q(status_code__in=(401, 403))),
            server=Count("id", filter=Q(status_code__gte=500)),
        )
    )
    alerts = []
    for row in failures:
        provider_id, name = str(row["model__provider_id"]), row["model__provider__name"]
        auth, server = row["auth"], row["server"]
        context = {"provider": name, "minutes": minutes, "now": now}
        target, scope = ("provider", provider_id), f"{provider_id}:{window}"
        if auth:
            subject = f"Provider {name} refused the gateway's key"
            body = ("notifications/admin_provider_auth.txt", {**context, "count": auth})
            alerts.append(AdminAlert(Kind.PROVIDER_AUTH, scope, target, _renderer(subject, body, {"refusals": auth})))
        if server >= threshold:
            subject = f"Upstream errors from {name}: {server} in {minutes} minutes"
            body = ("notifications/admin_upstream_errors.txt", {**context, "count": server})
            figures = {"errors": server, "threshold": threshold}
            alerts.append(AdminAlert(Kind.UPSTREAM_ERRORS, scope, target, _renderer(subject, body, figures)))
    return alerts


def admin_alerts_scan(*, now: dt.datetime) -> list[Notification]:
    """Quarantines, providers refusing the gateway's key (401/403), and bursts of upstream failures.
    What is already claimed is looked up in one query and never rendered again."""
    if not settings.GATEWAY_ALERT_EMAILS:
        return []
    alerts = _quarantine_alerts(now) + _provider_alerts(now) + _deployment_out_alerts(now)
    if not alerts:
        return []
    done = set(
        Notification.objects.filter(kind__in=ADMIN_KINDS, scope__in={a.scope for a in alerts}).values_list(
            "kind", "scope"
        )
    )
    claimed = [_admin_claim(alert=a, now=now) for a in alerts if (a.kind, a.scope) not in done]
    return [n for n in claimed if n is not None]


def _send_free(now: dt.datetime) -> Q:
    """Unsent and its sending not claimed, or claimed by a send presumed dead."""
    return Q(sent_at__isnull=True) & (Q(send_claimed_at__isnull=True) | Q(send_claimed_at__lt=now - SEND_LEASE))


def alerts_scan(*, now: dt.datetime | None = None) -> list[Notification]:
    now = now or timezone.now()
    stale = Notification.objects.filter(_send_free(now), created_at__lt=now - RESEND_AFTER)
    for notification_id in stale.values_list("pk", flat=True):
        _enqueue(notification_id)
    return member_alerts_scan(now=now) + group_alerts_scan(now=now) + admin_alerts_scan(now=now)


def _send_claim(*, notification_id: int, now: dt.datetime) -> Notification | None:
    """Claim the sending of one mail with a conditional UPDATE: of any number of sends of the same
    mail at once (the first send, a resend by the scan, a retry), one gets it back."""
    claimed = Notification.objects.filter(_send_free(now), pk=notification_id).update(send_claimed_at=now)
    return Notification.objects.get(pk=notification_id) if claimed else None


def notification_send(*, notification_id: int, now: dt.datetime | None = None) -> bool:
    """Send one claimed mail and audit it. The mail goes out before the row is marked, outside any
    transaction: a crash in between sends it once more (after SEND_LEASE) rather than never. A send
    that fails gives its claim back, so the task's retry can send it."""
    now = now or timezone.now()
    notification = _send_claim(notification_id=notification_id, now=now)
    if notification is None:
        return False
    try:
        send_mail(notification.subject, notification.body, settings.DEFAULT_FROM_EMAIL, notification.recipients)
    except BaseException:
        Notification.objects.filter(pk=notification_id, send_claimed_at=now).update(send_claimed_at=None)
        raise
    with transaction.atomic():
        marked = Notification.objects.filter(pk=notification_id, sent_at__isnull=True).update(sent_at=now)
        if marked:
            audit_record(
                actor=None,
                action="notification_sent",
                target=notification,
                target_type=notification.target_type,
                target_id=notification.target_id,
                after={
                    "kind": notification.kind,
                    "scope": notification.scope,
                    "recipients": notification.recipients,
                    **notification.figures,
                },
                now=now,
            )
    return bool(marked)


def alert_preference_of(*, member: Member) -> AlertPreference:
    """The member's choices; everything on for a member who never changed them."""
    return AlertPreference.objects.filter(member=member).first() or AlertPreference(member=member)


def alert_preference_update(*, member: Member, near_cap: bool, cap_reached: bool, language: str) -> AlertPreference:
    preference = AlertPreference.objects.update_or_create(
        member=member, defaults={"near_cap": near_cap, "cap_reached": cap_reached, "language": language}
    )[0]
    return preference


def alert_language_remember(*, member: Member, language: str) -> None:
    """Mails are written in the language the member last used the portal in."""
    AlertPreference.objects.update_or_create(member=member, defaults={"language": language})
