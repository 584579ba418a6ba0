"""The base of the project's management commands: their audit events are the operator's, written
as "system", and share one request id per run (`cmd-<command>-<8 hex>`), so a run's changes can
be listed together with `GET /api/admin/audit` or the audit admin's search."""

import uuid
from typing import Any

from django.core.management.base import BaseCommand

from allocations.audit import audit_context


class AuditedCommand(BaseCommand):
    def execute(self, *args: Any, **options: Any) -> str | None:
        name = type(self).__module__.rsplit(".", 1)[-1]
        with audit_context(request_id=f"cmd-{name[:40]}-{uuid.uuid4().hex[:8]}"):
            return super().execute(*args, **options)
