"""`serve --workers N`: N daphne workers on one socket, a dead worker replaced, SIGTERM drains."""

import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from quota.models import CallRecord, Reservation

from .conftest import chat

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_workers_serve_and_a_killed_worker_is_replaced(serve_factory, arrange):
    server = serve_factory(2)
    world = arrange(server)
    allocation = world.allocation()
    workers = server.workers()
    assert len(workers) == 2
    assert [chat(server.url, allocation.plaintext, allocation.model.slug).status_code for _ in range(4)] == [200] * 4

    victim = min(workers)
    # Every worker shares the metrics directory the supervisor made; a dead worker's live gauges go.
    metrics = Path(environ_of(victim)["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics.is_dir() and metrics.name.startswith("gateway-metrics-")
    assert {environ_of(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in workers} == {str(metrics)}
    live_gauge = metrics / f"gauge_livesum_{victim}.db"
    live_gauge.write_bytes(b"")
    os.kill(victim, signal.SIGKILL)
    # Calls keep being answered (by the survivor) while the supervisor starts a replacement.
    statuses = [chat(server.url, allocation.plaintext, allocation.model.slug).status_code for _ in range(3)]
    server.wait_listening(3)
    replaced = server.workers()
    assert len(replaced) == 2 and victim not in replaced
    statuses += [chat(server.url, allocation.plaintext, allocation.model.slug).status_code for _ in range(3)]
    assert statuses == [200] * 6
    assert CallRecord.objects.filter(allocation=allocation, outcome="success").count() == 10
    assert "exited (status -9)" in server.log
    assert not live_gauge.exists()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    assert not metrics.exists()  # made for this run, removed with it


def environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_sigterm_under_load_answers_or_records_every_admitted_call_and_exits_within_the_grace(
    serve_factory, arrange, fake
):
    # The calls end ~2 s after the SIGTERM and the drain with them: a grace well above that costs
    # this test nothing, and leaves room for the interpreter's exit on a loaded machine.
    grace = 15
    server = serve_factory(2, GATEWAY_SHUTDOWN_GRACE_S=str(grace))
    world = arrange(server)
    slow = world.allocation("fake-sleep-2000")
    trickle = world.allocation("fake-trickle")
    calls = [(slow, False)] * 5 + [(trickle, True)] * 2
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(chat, server.url, a.plaintext, a.model.slug, stream=s) for a, s in calls]
        deadline = time.monotonic() + 20
        while len(fake.requests) < len(calls):
            assert time.monotonic() < deadline, f"the upstream saw {len(fake.requests)} calls:\n{server.log}"
            time.sleep(0.01)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while server.log.count("shutdown: draining") < 2:
            assert time.monotonic() < stopped + grace, server.log
            time.sleep(0.01)
        # Both workers stopped accepting (and the supervisor closed its copy): a new call is refused
        # at once, while the calls in flight go on.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v1/models", timeout=5)
        answers = [f.result() for f in futures]
        code = server.process.wait(grace + 5)
        took = time.monotonic() - stopped
    assert code == 0
    assert took < grace, server.log
    assert [a.status_code for a in answers] == [200] * len(calls)
    assert all("[DONE]" in a.text for a in answers[5:])
    records = CallRecord.objects.filter(allocation__in=[slow, trickle])
    assert records.count() == len(fake.requests) == len(calls)
    assert set(records.values_list("outcome", flat=True)) == {"success"}
    assert not Reservation.objects.exists()
    assert "Killed" not in server.log and "drained in" in server.log


def test_calls_that_outlive_the_grace_are_recorded_as_worker_lost_before_the_worker_exits(serve_factory, arrange, fake):
    grace = 1
    server = serve_factory(1, GATEWAY_SHUTDOWN_GRACE_S=str(grace))
    world = arrange(server)
    hang = world.allocation("fake-sleep-30000")
    errors: list[BaseException] = []

    def call():
        try:
            chat(server.url, hang.plaintext, hang.model.slug, timeout=20)
        except BaseException as exc:  # noqa: BLE001 - the connection is cut: that is the point
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(fake.requests) < 3:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(grace + 20)
    for thread in threads:
        thread.join(20)
    # The drain gave up at the grace and the worker exited by itself (not killed by the supervisor).
    assert code == 0 and "outlived the grace" not in server.log and "all workers exited" in server.log
    assert len(errors) == 3
    # Each call the upstream saw has its one record, billed at its admission's estimate; no
    # reservation is left for the sweeper.
    records = CallRecord.objects.filter(allocation=hang)
    assert len(fake.requests) == 3
    assert (
        sorted(records.values_list("outcome", "error_code", "estimated"))
        == [("gateway_error", "worker_lost", True)] * 3
    )
    assert all(r.cost_usd and r.cost_usd > 0 for r in records)
    assert not Reservation.objects.filter(counter__allocation=hang).exists()
    assert "grace of 1 s ran out" in server.log and "3 call(s) still running recorded as worker_lost" in server.log


def test_one_keep_alive_connection_carries_sequential_and_pipelined_calls_each_answered_and_recorded(
    serve_factory, arrange
):
    """The request cycle's server patches (process as a plain method, the light inbox, the idle timer
    kept across requests, the finish) on the real server: one TCP connection, three calls one after
    another and then two sent in one write; each answered in order with its own body and recorded."""
    server = serve_factory(1)
    allocation = arrange(server).allocation()
    address = urllib.parse.urlsplit(server.url)
    body = json.dumps({"model": allocation.model.slug, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.hostname}\r\n"
        f"Authorization: Bearer {allocation.plaintext}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    with socket.create_connection((address.hostname, address.port), timeout=20) as sock:
        reader = sock.makefile("rb")

        def answer() -> dict:
            status = reader.readline()
            length = None
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            assert status.startswith(b"HTTP/1.1 200"), status
            assert length is not None, "a whole answer carries its length"
            return json.loads(reader.read(length))

        answers = []
        for _ in range(3):
            sock.sendall(head + body)
            answers.append(answer())
        sock.sendall((head + body) * 2)
        answers += [answer(), answer()]

    assert [a["object"] for a in answers] == ["chat.completion"] * 5
    deadline = time.monotonic() + 10
    while CallRecord.objects.filter(allocation_id=allocation.id).count() < 5:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    assert CallRecord.objects.filter(allocation_id=allocation.id, outcome="success").count() == 5
