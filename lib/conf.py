"""A Django setting read on the hot path without `LazySettings`' Python `__getattribute__`.

`django.conf.settings` is a `LazyObject`, whose `__getattribute__` is a Python method run on every
attribute read, cached or not (~2 k instructions on CPython 3.11, some 18 reads a /v1 call).
`LazySettings` keeps each setting it has read in its own instance dict, and empties that same dict
whenever its settings are replaced (`override_settings`, a test's `settings` fixture) or pops a
name that is set or deleted: so that dict, read directly, holds exactly the values a read of
`settings` would return, and anything else is read through `settings` itself (which caches it)."""

from typing import Any

from django.conf import settings

_read: dict[str, Any] = object.__getattribute__(settings, "__dict__")


def setting(name: str) -> Any:
    """`getattr(settings, name)`: the same value, from LazySettings' cache when it holds it."""
    try:
        return _read[name]
    except KeyError:
        return getattr(settings, name)
