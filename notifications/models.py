"""Mails the gateway sends: spend alerts to members, operational alerts to admins."""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Kind(models.TextChoices):
    NEAR_CAP = "near_cap", "Near a cap"
    CAP_REACHED = "cap_reached", "Cap reached"
    QUARANTINED = "quarantined", "Allocation quarantined"
    PROVIDER_AUTH = "provider_auth", "Provider refused the gateway's key"
    UPSTREAM_ERRORS = "upstream_errors", "Upstream errors above the threshold"
    GROUP_NEAR_CAP = "group_near_cap", "A group near its budget"
    GROUP_CAP_REACHED = "group_cap_reached", "A group's budget reached"


MEMBER_KINDS = (Kind.NEAR_CAP, Kind.CAP_REACHED)
GROUP_KINDS = (Kind.GROUP_NEAR_CAP, Kind.GROUP_CAP_REACHED)
# A member's switch for a kind of mail (AlertPreference field): a group's mails follow the
# member's own near-cap and cap-reached choices.
PREFERENCE_OF: dict[str, str] = {Kind.GROUP_NEAR_CAP: Kind.NEAR_CAP, Kind.GROUP_CAP_REACHED: Kind.CAP_REACHED}
ADMIN_KINDS = (Kind.QUARANTINED, Kind.PROVIDER_AUTH, Kind.UPSTREAM_ERRORS)


class Notification(models.Model):
    """One mail, claimed by inserting its row: the unique (kind, scope) makes it exactly once
    whatever number of processes run the scan. `scope` names what the mail is about and for
    which period or window (allocation × billing period, provider × 5-minute window …)."""

    kind = models.CharField(max_length=20, choices=Kind.choices, verbose_name=_("kind"))
    scope = models.CharField(max_length=120, verbose_name=_("scope"))
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, verbose_name=_("member")
    )
    recipients = models.JSONField(default=list, verbose_name=_("recipients"))
    subject = models.CharField(max_length=200, verbose_name=_("subject"))
    body = models.TextField(verbose_name=_("body"))
    # What the mail said, for the audit event and for admins reading the notification list.
    figures = models.JSONField(default=dict, verbose_name=_("figures"))
    target_type = models.CharField(max_length=40, verbose_name=_("target type"))
    target_id = models.CharField(max_length=64, verbose_name=_("target ID"))
    created_at = models.DateTimeField(verbose_name=_("created at"))
    # When a send took this mail; another send may take it only once SEND_LEASE has passed
    # (notifications.services), so overlapping sends mail it once.
    send_claimed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("send claimed at"))
    sent_at = models.DateTimeField(null=True, blank=True, verbose_name=_("sent at"))

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        constraints = [models.UniqueConstraint(fields=["kind", "scope"], name="notification_once_per_scope")]
        # The scan looks for unsent mails every minute; sent ones are nearly all of the table.
        indexes = [
            models.Index(fields=["created_at"], condition=models.Q(sent_at__isnull=True), name="notification_unsent")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.scope}"


class AlertPreference(models.Model):
    """A member's choice of spend alerts and the language they are written in."""

    member = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_preference", verbose_name=_("member")
    )
    near_cap = models.BooleanField(default=True, verbose_name=_("near cap"))
    cap_reached = models.BooleanField(default=True, verbose_name=_("cap reached"))
    language = models.CharField(max_length=10, blank=True, verbose_name=_("language"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("alert preference")
        verbose_name_plural = _("alert preferences")

    def wants(self, kind: str) -> bool:
        return bool(getattr(self, str(PREFERENCE_OF.get(kind, kind)), True))
