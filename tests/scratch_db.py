"""A migration under test, run on a database of its own.

The test database is at every app's latest migration. Taking one app back to just before the
migration under test there also unapplies every later migration of the apps that depend on it
(most of quota's), and putting the database back applies them all again: half a minute a test.
On an empty database of its own, a migration test applies only what the migration needs (its
app's earlier migrations and their dependencies), and the test database never leaves its latest
state. The migration's own code runs as it does in `manage.py migrate`: on the default
connection, pointed at the scratch database for the test's duration (as Django's test runner
points it at the test database).
"""

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def _server_params() -> dict:
    db = connection.settings_dict
    params = {"host": db["HOST"] or "127.0.0.1", "port": db["PORT"] or 5432, "user": db["USER"], "dbname": "postgres"}
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    return params


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """The default connection on a new, empty database for the block; then on the test database
    again, the scratch one dropped. Needs a transactional test (no atomic block is open)."""
    assert not connection.in_atomic_block, "a scratch database needs django_db(transaction=True)"
    name = f"gw_scratch_{uuid.uuid4().hex[:10]}"
    params = _server_params()
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    test_name = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = name
    try:
        yield name
    finally:
        connection.close()
        connection.settings_dict["NAME"] = test_name
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def scratch_executor(transactional_db) -> Iterator[MigrationExecutor]:
    """A migration executor on an empty database of its own (see the module's docstring)."""
    with scratch_database():
        yield MigrationExecutor(connection)
