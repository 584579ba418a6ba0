"""The test run's settings: the project's, with one Redis database per parallel worker.

pytest-xdist's workers share one Redis server and cache.clear() is FLUSHDB, so each worker takes
REDIS_URL's database number + its index. Written back to the environment, so the servers and
workers the tests start in subprocesses use the same database; idempotent (the base URL is kept
aside), so a subprocess that loads these settings again does not add the index twice.
"""

import os

_base_url = os.environ.setdefault("GATEWAY_TEST_REDIS_BASE_URL", os.environ.get("REDIS_URL", ""))
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
_prefix, _, _db = _base_url.rpartition("/")
if _base_url and _worker.startswith("gw") and _db.isdigit():
    os.environ["REDIS_URL"] = f"{_prefix}/{(int(_db) + int(_worker[2:])) % 16}"

from gateway_project.settings import *  # noqa: E402, F403
