"""Two fixes to daphne 4.2 that SPEC 6 needs, applied once from `RealtimeConfig.ready()` (no-ops
when daphne is not installed).

1. Close codes and reasons. daphne drops the ASGI `reason` of `websocket.close` and hands the code to
   autobahn's `sendClose`, which only accepts 1000 and 3000-4999: a 1008 close raises inside daphne
   and the client never gets a close frame. The close branch of daphne's reply handler is replaced
   by autobahn's lower-level `sendCloseFrame`, which sends any valid code with the reason (≤ 123 bytes).
2. Graceful shutdown. On SIGTERM/SIGINT daphne cancels every application task and exits; a session
   cancelled that way has no reliable chance to write its call record (the interpreter can be gone
   before the settlement's thread returns). So before daphne cancels anything, every open realtime
   session is finished first (billed, recorded, closed with 1001), and twisted waits for that.
"""

import asyncio
import importlib.util

_applied = False


def patch_daphne() -> None:
    global _applied
    if _applied or importlib.util.find_spec("daphne") is None:
        return
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    original_reply = WebSocketProtocol.handle_reply

    def handle_reply(self, message):
        if message.get("type") == "websocket.close" and self.state not in (self.STATE_CONNECTING, self.STATE_CLOSED):
            code = message.get("code") or 1000
            reason = message.get("reason") or ""
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123] if reason else None)
            return None
        return original_reply(self, message)

    original_kill = Server.kill_all_applications

    def kill_all_applications(self):
        from twisted.internet import defer

        from .consumers import shutdown_sessions

        finished = defer.Deferred.fromFuture(asyncio.ensure_future(shutdown_sessions()))
        finished.addBoth(lambda _: original_kill(self))
        return finished

    WebSocketProtocol.handle_reply = handle_reply
    Server.kill_all_applications = kill_all_applications
    _applied = True
