"""The Celery app (`celery -A gateway_project worker|beat`).

- Heartbeats (ops.heartbeat): the worker writes one from its timer, beat from its scheduler's tick,
  so the health detail and /metrics tell a stopped worker from a stopped beat.
- With GATEWAY_LOG_FORMAT=json every line is a JSON log record: Django's LOGGING configures the
  logs (Celery's own set-up is skipped), and the start-up banners, which Celery prints rather than
  logs, are left out.
"""

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from celery import Celery, bootsteps, signals
from celery.beat import PersistentScheduler
from celery.worker import WorkController

from ops.logs import JsonFormatter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
JSON_LOGS = os.environ.get("GATEWAY_LOG_FORMAT") == "json"


class GatewayCelery(Celery):
    def subclass_with_self(self, Class: type | str, *args: Any, **kwargs: Any) -> type:
        made = super().subclass_with_self(Class, *args, **kwargs)
        if JSON_LOGS and Class in ("celery.apps.worker:Worker", "celery.apps.beat:Beat"):
            return type(made.__name__, (made,), {"__init__": _quiet_init(made)})
        return made


def _quiet_init(cls: Any) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["quiet"] = True
        cls.__init__(self, *args, **kwargs)

    return __init__


app = GatewayCelery("gateway_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.beat_scheduler = "gateway_project.celery:HeartbeatScheduler"
app.autodiscover_tasks()
# Periodic jobs are declared next to their tasks (quota/tasks.py) and registered in settings.


def json_logging(**kwargs: Any) -> None:
    """Django's LOGGING (JSON) for this process, Python's warnings included, and the lines Celery
    writes straight to the terminal (shutdown notices, from its signal handlers) as JSON too."""
    import logging.config

    from celery.apps import worker
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    logging.captureWarnings(True)
    worker.safe_say = _say_as_json


def _say_as_json(msg: object, f: TextIO | None = sys.__stderr__) -> None:
    # Called from signal handlers: one os.write, no logging locks.
    assert f is not None, "no standard error to write to"
    record = logging.LogRecord("celery.apps.worker", logging.INFO, "", 0, str(msg).strip(), (), None)
    os.write(f.fileno(), (JsonFormatter().format(record) + "\n").encode())


if JSON_LOGS:  # only in the Celery processes (every process imports this module)
    signals.celeryd_init.connect(json_logging)  # before the worker's start-up checks warn
    signals.setup_logging.connect(json_logging)  # instead of Celery's own set-up (worker and beat)


class WorkerHeartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: WorkController, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref = None

    def start(self, worker: WorkController) -> None:
        from ops import heartbeat

        heartbeat.beat(process="celery_worker")
        self.timer_ref = worker.timer.call_repeatedly(
            heartbeat.INTERVAL_S, heartbeat.beat, kwargs={"process": "celery_worker"}
        )

    def stop(self, worker: WorkController) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()


app.steps["worker"].add(WorkerHeartbeat)


class HeartbeatScheduler(PersistentScheduler):
    """Celery's default scheduler that also writes beat's heartbeat, every INTERVAL_S at most."""

    _next_heartbeat = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        from ops import heartbeat

        now = time.monotonic()
        if now >= self._next_heartbeat:
            heartbeat.beat(process="celery_beat")
            self._next_heartbeat = now + heartbeat.INTERVAL_S
        return min(super().tick(*args, **kwargs), heartbeat.INTERVAL_S)
