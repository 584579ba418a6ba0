from typing import Any

from allocations.management.base import AuditedCommand
from notifications.services import alerts_scan


class Command(AuditedCommand):
    help = "Claim and send the spend and operational alerts that are due (Celery beat runs this every minute)."

    def handle(self, *args: Any, **options: Any) -> None:
        claimed = alerts_scan()
        self.stdout.write(f"{len(claimed)} notification(s) claimed")
