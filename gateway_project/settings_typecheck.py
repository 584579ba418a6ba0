"""The settings mypy's Django plugin imports: the laptop defaults (DEBUG on), as `make run` uses."""

import os

os.environ.setdefault("DEBUG", "true")

from .settings import *  # noqa: E402, F403
