"""A Django setting read on the hot path without `LazySettings`' Python `__getattribute__`.

`django.conf.settings` is a `LazyObject`, whose `__getattribute__` is a Python method run on every
attribute read, cached or not (~2 k instructions on CPython 3.11, some 18 reads a /v1 call).
`LazySettings` keeps each setting it has read in its own instance dict, and empties that same dict
whenever its settings are replaced (`override_settings`, a test's `settings` fixture) or pops a
name that is set or deleted: so that dict, read directly, holds exactly the values a read of
`settings` would return, and anything else is read through `settings` itself (which caches it)."""

import datetime as dt
from typing import Any

from django.conf import settings
from django.utils import timezone

_read: dict[str, Any] = object.__getattribute__(settings, "__dict__")
_django_now = timezone.now
_UTC = dt.UTC


def setting(name: str) -> Any:
    """`getattr(settings, name)`: the same value, from LazySettings' cache when it holds it."""
    try:
        return _read[name]
    except KeyError:
        return getattr(settings, name)


def now() -> dt.datetime:
    """`django.utils.timezone.now()`: the same time (aware in UTC under USE_TZ, else naive), USE_TZ
    read as `setting` reads it; when `timezone.now` has been replaced (a test's clock), that."""
    if timezone.now is not _django_now:
        return timezone.now()
    try:
        aware = _read["USE_TZ"]
    except KeyError:
        aware = settings.USE_TZ
    return dt.datetime.now(_UTC if aware else None)
