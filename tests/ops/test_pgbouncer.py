"""Behind a real PgBouncer in transaction mode (Debian's package, `make pgbouncer`), with
GATEWAY_PGBOUNCER=true: every call is served and recorded, and no statement fails for a prepared
statement that another server connection holds."""

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from quota.models import CallRecord
from tests.conftest import free_port
from tests.proxy.conftest import World
from tests.serving.conftest import start_serve

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
CALLS = 200

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="Debian's pgbouncer is not installed (make pgbouncer)"),
]


@pytest.fixture
def pgbouncer():
    """PgBouncer on a free port, transaction mode, in front of the test database's server."""
    db = connection.settings_dict
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    (work / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={db["HOST"] or "127.0.0.1"} port={db["PORT"] or 5432} user={db["USER"]}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
"""
    )
    shutil.chown(work, "postgres")
    command = [PGBOUNCER, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(work / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "listening on 127.0.0.1" not in _read(work / "pgbouncer.log"):
        assert process.poll() is None and time.monotonic() < deadline, _read(work / "pgbouncer.log")
        time.sleep(0.1)
    yield f"postgres://{db['USER']}@127.0.0.1:{port}/{db['NAME']}"
    process.terminate()
    process.wait(10)
    shutil.rmtree(work, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_two_hundred_calls_through_pgbouncer_in_transaction_mode_are_all_recorded_without_a_traceback(pgbouncer, fake):
    server = start_serve(1, DATABASE_URL=pgbouncer, GATEWAY_PGBOUNCER="true")
    try:
        world = World(server.url, fake.url)
        allocation = world.allocation()
        client = world.client(allocation.plaintext)

        def call(n: int) -> int:
            reply = client.chat.completions.with_raw_response.create(
                model=allocation.model.slug,
                messages=[{"role": "user", "content": f"call {n}"}],
                extra_headers={"X-Request-Id": f"pgb-{n}"},
            )
            return reply.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(CALLS)))
        assert statuses == [200] * CALLS
        deadline = time.monotonic() + 20
        while CallRecord.objects.filter(request_id__startswith="pgb-").count() < CALLS:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        server.process.terminate()
        server.process.wait(30)
    assert CallRecord.objects.filter(request_id__startswith="pgb-", outcome="success").count() == CALLS
    assert "Traceback" not in server.log and "prepared statement" not in server.log, server.log[-3000:]
