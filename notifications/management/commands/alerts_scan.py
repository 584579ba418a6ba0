from django.core.management.base import BaseCommand

from notifications.services import alerts_scan


class Command(BaseCommand):
    help = "Claim and send the spend and operational alerts that are due (Celery beat runs this every minute)."

    def handle(self, *args, **options):
        claimed = alerts_scan()
        self.stdout.write(f"{len(claimed)} notification(s) claimed")
