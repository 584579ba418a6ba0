"""A realtime session's log line and metrics (ops.observe), refused or relayed."""

import json
import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY

from gateway_project.asgi import application
from ops import metrics
from ops.logs import JsonFormatter

from .conftest import TOKEN_PRICE, realtime_world, session_records
from .test_session import open_session, turn

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lines(caplog, **match) -> list[dict]:
    found = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "gateway_fields", None)]
    return [line for line in found if all(line.get(k) == v for k, v in match.items())]


async def test_a_session_writes_one_line_with_its_usage_and_close_reason_and_is_counted(
    fake_upstream, settings, caplog
):
    settings.GATEWAY_METRICS_TOKEN = "t" * 20
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    before = sample("gateway_requests_total", endpoint="realtime", outcome="success", status="1000")
    open_before = sample("gateway_realtime_sessions_open")
    with caplog.at_level(logging.INFO, logger="gateway.calls"):
        comm = await open_session(world)
        assert sample("gateway_realtime_sessions_open") == open_before + 1
        await turn(comm)
        await comm.disconnect(code=1000)
        [record] = await session_records(world.allocation)
    [line] = lines(caplog, endpoint="realtime", model=world.slug)
    assert (line["request_id"], line["allocation_id"]) == (record.request_id, str(world.allocation.pk))
    assert (line["outcome"], line["close_reason"], line["status"]) == ("success", "normal", 1000)
    assert (line["input_tokens"], line["output_tokens"]) == (record.input_tokens, record.output_tokens)
    assert line["cost_usd"] == str(record.cost_usd) and line["duration_ms"] > 0
    assert world.key not in json.dumps(line)
    assert sample("gateway_requests_total", endpoint="realtime", outcome="success", status="1000") == before + 1
    assert sample("gateway_realtime_sessions_open") == open_before
    assert sample("gateway_tokens_total", model=world.slug, direction="input") == record.input_tokens


async def test_a_refused_handshake_writes_its_line_and_counts_its_code(fake_upstream, settings, caplog):
    settings.GATEWAY_METRICS_TOKEN = "t" * 20
    world = await database_sync_to_async(realtime_world)(fake_upstream, price=TOKEN_PRICE)
    before = sample("gateway_admission_refusals_total", code="unauthorized")
    bad = "sk-gw-" + "x" * 43
    with caplog.at_level(logging.INFO, logger="gateway.calls"):
        comm = WebsocketCommunicator(
            application, f"/v1/realtime?model={world.slug}", headers=[(b"authorization", f"Bearer {bad}".encode())]
        )
        await comm.connect()
        closed = await comm.receive_output(timeout=10)
        assert closed["type"] == "websocket.close" and closed["code"] == 1008
    [line] = lines(caplog, endpoint="realtime", error_code="unauthorized")
    assert line["outcome"] == "rejected_unauthenticated" and bad not in json.dumps(line)
    assert sample("gateway_admission_refusals_total", code="unauthorized") == before + 1
