"""The migration that partitions call records, forward and back, on a populated table: every row
and column survives (a column another migration added included), ids keep counting from where
they were, indexes and foreign keys come back under their names, and the index diet before it goes
back and forth too."""

import datetime as dt
import hashlib

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from tests.factories import AllocationFactory

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = "quota_callrecord"
DIET = ("quota", "0008_call_record_index_diet")
PARTITIONS = ("quota", "0009_call_record_partitions")
BEFORE_DIET = ("quota", "0007_model_forbidden_outcome")


def migrate(target) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


def sql(query: str, params=None):
    with connection.cursor() as c:
        c.execute(query, params)
        return c.fetchall() if c.description else None


def relkind() -> str:
    return sql("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])[0][0]


def fingerprint() -> tuple[int, str]:
    rows = sql(f"SELECT t::text FROM {TABLE} t ORDER BY id")  # noqa: S608
    return len(rows), hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest()


def shape() -> tuple[list, list]:
    indexes = sql(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = %s::regclass ORDER BY 1",
        [TABLE],
    )
    keys = sql(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass ORDER BY 1",
        [TABLE],
    )
    return [(n, d.replace(" ON ONLY ", " ON ")) for n, d in indexes], keys


def populate(allocation, count=500) -> None:
    sql(
        f"INSERT INTO {TABLE} (request_id, allocation_id, member_id, model_id, endpoint, started_at, outcome,"  # noqa: S608
        " input_tokens, output_tokens, cached_tokens, reasoning_tokens, audio_input_tokens, audio_output_tokens,"
        " unit, cost_usd, priced, estimated, error_code, error_message, is_stream, service_tier, tool_calls,"
        " close_reason, attempts, first_token_ms)"
        " SELECT 'r-' || g, %s, %s, %s, 'chat.completions', %s - g * interval '7 hours', 'success', g, 2 * g, 0, 0,"
        " 0, 0, '', g * 0.000001, true, false, '', '', g %% 2 = 0, '', '{\"web_search\": 1}', '', 1, g"
        " FROM generate_series(1, %s) g",
        [allocation.pk, allocation.member_id, allocation.model_id, dt.datetime(2026, 12, 1, tzinfo=dt.UTC), count],
    )


def partition_names() -> set[str]:
    return {
        r[0] for r in sql("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass", [TABLE])
    }


@pytest.mark.slow
def test_partitioning_forward_and_back_on_a_populated_table():
    months_before = partition_names()
    migrate(BEFORE_DIET)
    try:
        allocation = AllocationFactory()
        # A column another branch's migration added before this one runs: it must be carried.
        sql(f"ALTER TABLE {TABLE} ADD COLUMN first_token_ms integer")
        populate(allocation)  # ~146 days: six months of history
        before = fingerprint()
        migrate(DIET)
        diet_indexes, diet_keys = shape()
        assert not [n for n, _ in diet_indexes if n.endswith("_like")]
        assert ("callrecord_request_id" in {n for n, _ in diet_indexes}) and len(diet_indexes) == 7
        migrate(PARTITIONS)
        assert relkind() == "p"
        assert fingerprint() == before
        indexes, keys = shape()
        names = {n for n, _ in indexes}
        assert names == {n for n, _ in diet_indexes}
        assert dict(indexes)["quota_callrecord_pkey"].endswith("(id, started_at)")
        assert len([k for k, d in keys if d.startswith("FOREIGN KEY")]) == 5
        months = sql("SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", [TABLE])[0][0]
        assert months >= 7  # every month of the history, the months ahead and DEFAULT
        # ids go on from the highest; foreign keys still hold.
        (new_id,) = sql(
            f"INSERT INTO {TABLE} (request_id, endpoint, started_at, outcome, input_tokens, output_tokens,"  # noqa: S608
            " cached_tokens, reasoning_tokens, audio_input_tokens, audio_output_tokens, unit, priced, estimated,"
            " error_code, error_message, is_stream, service_tier, tool_calls, close_reason, attempts)"
            " VALUES ('new', 'x', now(), 'success', 0, 0, 0, 0, 0, 0, '', false, false, '', '', false, '', '{}', '', 0)"
            " RETURNING id"
        )[0]
        assert new_id == 501
        with pytest.raises(IntegrityError), transaction.atomic():
            sql(f"UPDATE {TABLE} SET allocation_id = gen_random_uuid() WHERE id = 1")  # noqa: S608
            sql("SET CONSTRAINTS ALL IMMEDIATE")
        sql(f"DELETE FROM {TABLE} WHERE id = 501")  # noqa: S608

        migrate(DIET)
        assert relkind() == "r"
        assert fingerprint() == before
        back_indexes, back_keys = shape()
        assert back_indexes == diet_indexes and back_keys == diet_keys
        assert dict(back_indexes)["quota_callrecord_pkey"].endswith("(id)")
        assert sql("SELECT count(*) FROM pg_class WHERE relname LIKE %s", [f"{TABLE}_p20%"]) == [(0,)]
        migrate(BEFORE_DIET)
        assert "quota_callrecord_request_id_0d16bc50_like" in {n for n, _ in shape()[0]}
        assert fingerprint() == before
    finally:
        migrate(PARTITIONS)
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        sql(f"ALTER TABLE {TABLE} DROP COLUMN IF EXISTS first_token_ms")
        # The months of the history made here go too: the next test on this database (the retention
        # checks, the prune) expects the months the migration made when the database was created.
        for name in partition_names() - months_before:
            sql(f"DROP TABLE {name}")
