"""Thin Celery wrappers around the notification services."""

from celery import shared_task

from . import services


@shared_task(name="notifications.alerts_scan", ignore_result=True)
def alerts_scan_task() -> int:
    return len(services.alerts_scan())


@shared_task(
    name="notifications.send",
    ignore_result=True,
    autoretry_for=(OSError,),
    retry_backoff=30,
    max_retries=5,
)
def notification_send_task(notification_id: int) -> bool:
    return services.notification_send(notification_id=notification_id)
