"""The server patches' start-up check; what the patches do is exercised under real daphne
processes by test_serve.py (drain) and tests/realtime/test_daphne.py (close codes)."""

import logging

import pytest

from gateway_project import serve, server_patches


def test_the_installed_server_stack_is_the_verified_one():
    assert server_patches.version_problems() == []
    assert server_patches.target_problems() == []


def test_every_patch_names_its_versions_and_targets():
    for patch in server_patches.PATCHES:
        assert patch.verified and patch.targets and patch.why
        assert set(patch.verified) <= {"daphne", "twisted", "autobahn", "django", "aiohttp"}


@pytest.mark.parametrize(
    "target",
    [
        "daphne.server:Server.no_such_method",
        "daphne.server:Server.run>no_such_attribute",
        "twisted.web.http:HTTPChannel.__init__>no_such_attribute",
    ],
)
def test_a_patched_attribute_that_disappeared_is_found(target):
    assert server_patches._missing(target)
    assert not server_patches._missing("daphne.server:Server.run>connections")


def test_an_unverified_version_refuses_to_start_and_names_the_patch(monkeypatch, caplog):
    monkeypatch.setattr(server_patches, "_installed", lambda d: "99.0" if d == "twisted" else None)
    monkeypatch.delenv(server_patches.ALLOW_ENV, raising=False)
    with caplog.at_level(logging.ERROR), pytest.raises(server_patches.UnverifiedServer) as raised:
        server_patches.check()
    assert "drain_on_shutdown" in str(raised.value) and "installed: 99.0" in str(raised.value)
    assert "server patch 'twisted_form_parse_off' was verified on twisted 26.10.0" in caplog.text


def test_the_operator_may_start_an_unverified_version_with_a_logged_error(monkeypatch, caplog):
    monkeypatch.setattr(server_patches, "_installed", lambda d: "9.9.9" if d == "daphne" else None)
    monkeypatch.setenv(server_patches.ALLOW_ENV, "1")
    with caplog.at_level(logging.ERROR):
        server_patches.check()
    assert "server patch 'websocket_close_codes' was verified on daphne 4.2.3; installed: 9.9.9" in caplog.text


def test_a_missing_attribute_refuses_to_start_even_when_allowed(monkeypatch):
    monkeypatch.setenv(server_patches.ALLOW_ENV, "1")
    monkeypatch.setattr(
        server_patches,
        "PATCHES",
        (server_patches.Patch("gone", {"daphne": ("4.2.3",)}, ("daphne.server:Server.gone",), None, "test"),),
    )
    with pytest.raises(server_patches.UnverifiedServer, match="daphne.server:Server.gone no longer exists"):
        server_patches.check()


def test_serve_refuses_before_starting_any_worker(monkeypatch, caplog):
    monkeypatch.setattr(server_patches, "_installed", lambda d: "1.0" if d == "autobahn" else None)
    monkeypatch.delenv(server_patches.ALLOW_ENV, raising=False)
    monkeypatch.setattr(serve, "Supervisor", None)  # never reached
    with caplog.at_level(logging.ERROR):
        assert serve.main(["--workers", "1", "-p", "0"]) == 2
    assert "refusing to start: server patch 'websocket_close_codes'" in caplog.text


@pytest.mark.parametrize(
    ("argv", "daphne_args"),
    [
        ([], ["gateway_project.asgi:application"]),
        (["-v", "0", "--proxy-headers", "other.asgi:app"], ["-v", "0", "--proxy-headers", "other.asgi:app"]),
        (
            ["--workers=3", "--access-log", "access.log"],
            ["--access-log", "access.log", "gateway_project.asgi:application"],
        ),
    ],
)
def test_serve_passes_daphne_options_through(argv, daphne_args):
    args, passthrough = serve.parse(argv)
    assert passthrough == daphne_args
    assert args.workers == (3 if "--workers=3" in argv else serve.cores())


@pytest.mark.parametrize(
    "argv", [["-e", "tcp:port=1"], ["--fd", "3"], ["-u", "gw.sock"], ["-b", "::1"], ["--workers", "0"]]
)
def test_serve_refuses_what_it_cannot_share(argv):
    with pytest.raises(SystemExit):
        serve.parse(argv)


def test_the_asgi_application_applies_every_patch_to_the_loaded_server():
    from daphne.http_protocol import HTTPFactory, WebRequest
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    assert Server.kill_all_applications is server_patches._drain_then_kill
    assert hasattr(WebRequest.__init__, "__wrapped__") and hasattr(WebSocketProtocol.handle_reply, "__wrapped__")
    assert HTTPFactory.log(None, None) is None  # Twisted's own would format a line from the request
    assert all(hasattr(getattr(WebRequest, name), "__wrapped__") for name in ("gotLength", "process"))  # the edge
    from twisted.web.http import HTTPChannel, Request

    from lib import asgi

    assert hasattr(Request.write, "__wrapped__") and hasattr(HTTPChannel.writeHeaders, "__wrapped__")  # the head
    assert asgi.part_writer is server_patches.part_writer
    assert server_patches.part_writer(lambda message: None) is None  # not daphne's send: parts go as messages
    server_patches.apply()  # once only: a second call wraps nothing twice
    assert not hasattr(WebRequest.__init__.__wrapped__, "__wrapped__")


def test_the_asgi_application_registers_every_kind_of_in_flight_work_the_drain_reads():
    import gateway_project.asgi  # noqa: F401 - imports the relays, which register themselves
    from lib import inflight
    from proxy import accounting, views

    registered = inflight.names()
    assert {"upstream calls", "settlements"} <= set(registered["tasks"])
    assert registered["on_shutdown"] == ["realtime sessions"]
    assert registered["on_abandon"] == ["unsettled calls"]
    assert registered["on_close"] == ["loop resources"]
    # the sets the relays add to are the ones the drain waits for
    assert inflight.tasks("upstream calls") is views._background
    assert inflight.tasks("settlements") is accounting._closing


async def test_a_connection_leaves_the_server_once_its_application_ended_and_its_client_is_gone():
    """reap_at_completion, whichever of the two ends last; an application that raised stays for
    daphne's checker, which logs it."""
    import asyncio

    from daphne.server import Server

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    release = asyncio.Event()

    async def application(scope, receive, send):
        await release.wait()
        if scope["path"] == "/raises":
            raise RuntimeError("the application failed")

    server = Server(application=application, endpoints=["tcp:port=0:interface=127.0.0.1"])  # never run: no socket
    server.connections = {}  # as Server.run starts it
    ends_first, leaves_first, raises = object(), object(), object()
    for protocol, path in ((ends_first, "/"), (leaves_first, "/"), (raises, "/raises")):
        server.protocol_connected(protocol)
        server.create_application(protocol, {"type": "http", "path": path})
    server.protocol_disconnected(leaves_first)
    await asyncio.sleep(0)
    assert set(server.connections) == {ends_first, leaves_first, raises}  # nothing ended yet

    release.set()
    for _ in range(3):  # the applications end, then their done callbacks run
        await asyncio.sleep(0)
    assert leaves_first not in server.connections  # its client had gone: reaped when it ended
    assert ends_first in server.connections  # ended, but its client is still there
    server.protocol_disconnected(ends_first)
    assert ends_first not in server.connections

    server.protocol_disconnected(raises)
    assert raises in server.connections  # left to the checker
    server.application_checker()
    assert server.connections == {}


def test_a_connection_is_asked_its_addresses_and_tls_once_per_transport():
    """connection_facts_once: every request of a keep-alive connection reads the channel's
    addresses and TLS; the transport is asked once, and again only when it is another one; the
    channel's __dict__ is never read."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel, Request

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    class Counted(StringTransport):
        asked = 0

        def getHost(self):
            self.asked += 1
            return IPv4Address("TCP", "127.0.0.1", 8000 + self.asked)

    class Channel(HTTPChannel):
        @property
        def __dict__(self):  # read, it would give the channel's attributes a dict of their own (CPython 3.11)
            raise AssertionError("the channel's __dict__ was read")

    first, second = Counted(), Counted(peerAddress=IPv4Address("TCP", "10.0.0.9", 5555))
    channel = Channel()
    channel.makeConnection(first)
    requests = [Request(channel) for _ in range(3)]
    assert [request.host.port for request in requests] == [8001, 8001, 8001] and first.asked == 1
    assert all(request.client == first.getPeer() for request in requests)
    assert not any(request.isSecure() for request in requests)

    channel.transport = second  # another transport: asked anew
    assert Request(channel).host.port == 8001 and second.asked == 1
    assert Request(channel).client == IPv4Address("TCP", "10.0.0.9", 5555)
    assert Request(channel).host.port == 8001 and second.asked == 1
    channel.connectionLost(None)


def test_daphne_requests_hash_by_identity_in_c_and_name_twisted_http_itself():
    """request_hash_in_c and deprecation_proxy_off: the same identity hash and equality; daphne's
    modules name twisted.web.http, not its deprecation proxy."""
    import types

    import daphne.http_protocol
    import daphne.server
    from daphne.http_protocol import WebRequest

    import gateway_project.asgi  # noqa: F401 - applies the patches on import

    assert WebRequest.__hash__ is object.__hash__
    one, other = object.__new__(WebRequest), object.__new__(WebRequest)
    table = {one: 1, other: 2}
    assert table[one] == 1 and table[other] == 2 and one == one and one != other
    assert type(daphne.http_protocol.http) is types.ModuleType and type(daphne.server.http) is types.ModuleType
    assert daphne.http_protocol.http.Request is WebRequest.__mro__[1]
