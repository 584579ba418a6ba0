"""The one way to write an audit event."""

from django.utils import timezone

from .models import AuditEvent


def audit_record(
    *,
    actor,
    action: str,
    target,
    before: dict | None = None,
    after: dict | None = None,
    source_ip: str | None = None,
    request_id: str = "",
    now=None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=getattr(actor, "username", None) or "system",
        action=action,
        target_type=target_type or target._meta.model_name,
        target_id=target_id or str(target.pk),
        before=before,
        after=after,
        source_ip=source_ip,
        request_id=request_id,
        created_at=now or timezone.now(),
    )
