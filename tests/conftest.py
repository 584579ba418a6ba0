import shutil
import socket
import subprocess
import time

import psycopg
import pytest
import redis
from _pytest.nodeid import NodeId
from asgiref.sync import SyncToAsync
from django.contrib.auth import signals
from django.core.cache import cache
from django.db import connections

from portal import sign_in_audit
from portal.sign_in_audit import SIGNED_IN_UID
from quota import ratelimit
from tests.factories import AllocationFactory, MemberFactory, PriceVersionFactory, make_key

# `page`: a real Chromium on the live server; `scratch_executor`: migrations on a database of their own
pytest_plugins = ["tests.browser", "tests.scratch_db"]


def _xdist_group(item: pytest.Item) -> str:
    marks = item.iter_markers("xdist_group")
    names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")) for mark in marks}
    return "_".join(sorted(names))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order the two xdist workers are handed the tests in, and the groups that stay on one.

    `slow` tests (each a quarter minute or more) come first: handed out last, one of them would
    keep a worker busy while the other had nothing left. The sort is stable, so everything else
    keeps its order, and every worker collects the same order.

    `--dist loadgroup` keeps an `xdist_group`'s tests on one worker by the `@group` suffix
    pytest-xdist gives their node ids (the controller schedules by id). pytest-xdist 3.8 writes
    it to `item._nodeid`, which pytest 9.2 no longer reads (the id is `item._id`): without the
    suffix written here the groups would be ignored, the browser modules and the fault suite run
    on both workers at once. pytest-xdist's own hook runs first; a suffix it wrote is kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        group = _xdist_group(item)
        if group and not item.nodeid.endswith(f"@{group}"):
            item._id = NodeId.parse(f"{item.nodeid}@{group}")  # noqa: SLF001


@pytest.fixture(scope="session", autouse=True)
def _close_asgiref_thread_connections(django_db_setup, django_db_blocker):
    """Consumers run in this process (tests/realtime) do their database work in asgiref's one
    thread for thread-sensitive calls when no sync code is outside them; that thread's connection
    can outlive the tests and keep the test database from being dropped at the end."""
    yield
    with django_db_blocker.unblock():
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(10)


def _emptying_sql_flush(original):
    """PostgreSQL's flush for the end of a transactional test: the same tables emptied, by DELETE.

    TRUNCATE gives every table and index a new file (a third of a second for this schema, after
    each of the suite's ~500 transactional tests); DELETE of a test's few rows is milliseconds.
    ACCESS EXCLUSIVE locks on every table first wait, as TRUNCATE's do, for any transaction still
    open on them (a server's late settlement); replica mode skips the row triggers TRUNCATE skips
    (the audit log's refusal of DELETE) and the foreign-key checks, so the order does not matter.
    Replica mode needs a superuser: other roles keep TRUNCATE, as does a flush that resets sequences.
    """

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or not tables or not _is_superuser(self.connection):
            return original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        names = ", ".join(style.SQL_FIELD(self.quote_name(table)) for table in tables)
        return [
            "SET LOCAL session_replication_role = replica",
            f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE",
            *(f"DELETE FROM {style.SQL_FIELD(self.quote_name(table))}" for table in tables),  # noqa: S608 (quoted table names)
        ]

    return sql_flush


def _is_superuser(connection) -> bool:
    if "gateway_is_superuser" not in connection.__dict__:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            connection.gateway_is_superuser = bool(cursor.fetchone()[0])
    return connection.gateway_is_superuser


@pytest.fixture(scope="session", autouse=True)
def _fast_flush():
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush
    DatabaseOperations.sql_flush = _emptying_sql_flush(original)
    yield
    DatabaseOperations.sql_flush = original


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield


@pytest.fixture
def member(db):
    return MemberFactory(username="alice")


@pytest.fixture
def other_member(db):
    return MemberFactory(username="bob")


@pytest.fixture
def staff(db):
    return MemberFactory(username="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(client, staff):
    # Signing the test's admin in is arrangement, not the behaviour under test: no audit event.
    signals.user_logged_in.disconnect(dispatch_uid=SIGNED_IN_UID)
    try:
        client.force_login(staff)
    finally:
        sign_in_audit.connect()
    return client


@pytest.fixture
def allocation(member):
    return AllocationFactory(member=member)


@pytest.fixture
def priced_allocation(allocation):
    PriceVersionFactory(model=allocation.model)
    return allocation


@pytest.fixture
def api_key(allocation):
    key, plaintext = make_key(member=allocation.member, allocations=[allocation])
    key.plaintext = plaintext
    return key


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    """PBKDF2 costs up to a second per user on a busy 2-core CI box; hashing strength is not under test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def loop_statements(monkeypatch):
    """The SQL statements run on the event loop's connections (by a cursor, or by the ledger's
    `run_statement`)."""
    from quota.ledger.loop import LoopConnection

    statements: list[str] = []
    original = psycopg.AsyncCursor.execute
    run_statement = LoopConnection.run_statement

    async def counting(self, query, params=None, **kwargs):
        statements.append(str(query))
        return await original(self, query, params, **kwargs)

    async def counting_run(self, sql, params, **kwargs):
        statements.append(sql)
        return await run_statement(self, sql, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting)
    monkeypatch.setattr(LoopConnection, "run_statement", counting_run)
    return statements


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def own_redis(settings):
    """A redis-server of this test's own, on its own port; the limiter points at it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    settings.GATEWAY_RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.GATEWAY_RATE_LIMIT_WARN_INTERVAL_S = 0.5
    ratelimit._down.update(until=0.0, warned=float("-inf"))
    yield proc
    proc.kill()
    proc.wait(10)
    ratelimit._down.update(until=0.0, warned=float("-inf"))
