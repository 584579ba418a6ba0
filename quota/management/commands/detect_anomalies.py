"""manage.py detect_anomalies: runs the anomaly-quarantine rule once (beat runs it every 5 minutes)."""

from typing import Any

from django.utils import timezone

from allocations.management.base import AuditedCommand
from quota.anomaly import anomalies_detect, anomaly_reason
from quota.pool_models import AnomalyConfig


class Command(AuditedCommand):
    help = "Quarantine active non-service allocations whose last hour of calls breaks the anomaly rule."

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        config = AnomalyConfig.load()
        if not config.active_at(now):
            paused_until = config.paused_until
            paused = f"paused until {paused_until.isoformat()}" if paused_until is not None else ""
            why = "switched off" if not config.enabled or not paused else paused
            self.stdout.write(f"anomaly detection is {why}; nothing done")
            return
        self.stdout.write("scanning the last 24 h of call records …")
        detections = anomalies_detect(now=now, config=config)
        for d in detections:
            verb = "quarantined" if d.quarantined else "flagged (no longer active)"
            self.stdout.write(f"{d.allocation_id}: {verb}: {anomaly_reason(d.figures)}")
        self.stdout.write(self.style.SUCCESS(f"{sum(d.quarantined for d in detections)} allocation(s) quarantined"))
