"""The rate-limit windows of quota.ratelimit kept in this process's memory, for a gateway without
Redis (`make run`): the same decisions as ratelimit.lua, but each process admits on its own."""

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from .ratelimit import Decision, Limits


@dataclass
class _Scope:
    requests: collections.deque = field(default_factory=collections.deque)  # admission times, oldest first
    tokens: dict = field(default_factory=dict)  # ticket -> [time, tokens], oldest first
    token_sum: int = 0
    in_flight: dict = field(default_factory=dict)  # ticket -> deadline

    def prune(self, now: float, window: float) -> None:
        while self.requests and self.requests[0] <= now - window:
            self.requests.popleft()
        for ticket, (at, amount) in list(self.tokens.items()):
            if at > now - window:
                break
            self.token_sum -= amount
            del self.tokens[ticket]
        for ticket, deadline in list(self.in_flight.items()):
            if deadline <= now:
                del self.in_flight[ticket]

    def token_wait(self, now: float, window: float, tpm: int, tokens: int) -> float:
        freed = 0
        for at, amount in self.tokens.values():
            freed += amount
            left = self.token_sum - freed
            if left < tpm and (left <= 0 or left + tokens <= tpm):
                return at + window - now
        return window


class MemoryWindows:
    def __init__(self) -> None:
        self.scopes: dict[str, _Scope] = collections.defaultdict(_Scope)
        self.lock = threading.Lock()

    def admit(
        self, ticket: str, limits: "Limits", *, tokens: int, count: bool, hold: bool, lease_s: float
    ) -> "Decision":
        from .ratelimit import decision_from  # the reply format is shared with the Redis script

        now, window = time.monotonic() * 1000, settings.GATEWAY_RATE_LIMIT_WINDOW_S * 1000
        with self.lock:
            scopes = [(self.scopes[name], rpm, tpm, par) for name, rpm, tpm, par in limits]
            wait = 0.0
            for scope, rpm, tpm, par in scopes:
                scope.prune(now, window)
                if rpm is not None and count and len(scope.requests) >= rpm:
                    wait = max(wait, scope.requests[len(scope.requests) - rpm] + window - now)
                used = scope.token_sum
                if tpm is not None and (used >= tpm or (used > 0 and used + tokens > tpm)):
                    wait = max(wait, scope.token_wait(now, window, tpm, tokens))
                if par is not None and hold and len(scope.in_flight) >= par:
                    wait = max(wait, 1000)
            allowed = wait == 0
            out = [-1, -1, 0, -1, -1, 0]
            for scope, rpm, tpm, par in scopes:
                if allowed:
                    if rpm is not None and count:
                        scope.requests.append(now)
                    if tpm is not None and tokens > 0:
                        scope.tokens[ticket] = [now, tokens]
                        scope.token_sum += tokens
                    if par is not None and hold:
                        scope.in_flight[ticket] = now + lease_s * 1000
                if rpm is not None and (out[0] < 0 or rpm - len(scope.requests) < out[1]):
                    newest = scope.requests[-1] + window - now if scope.requests else 0
                    out[0:3] = [rpm, max(0, rpm - len(scope.requests)), newest]
                if tpm is not None and (out[3] < 0 or tpm - scope.token_sum < out[4]):
                    newest = next(reversed(scope.tokens.values()))[0] + window - now if scope.tokens else 0
                    out[3:6] = [tpm, max(0, tpm - scope.token_sum), newest]
        return decision_from(" ".join(str(int(v)) for v in [1 if allowed else 0, wait, *out]))

    def settle(self, ticket: str, limits: "Limits", *, tokens: int) -> None:
        now = time.monotonic() * 1000
        with self.lock:
            for name, _rpm, tpm, par in limits:
                scope = self.scopes[name]
                if tpm is not None:
                    held = scope.tokens.get(ticket)
                    if held is not None:
                        scope.token_sum += tokens - held[1]
                        held[1] = tokens
                    elif tokens > 0:
                        scope.tokens[ticket] = [now, tokens]
                        scope.token_sum += tokens
                if par is not None:
                    scope.in_flight.pop(ticket, None)

    def renew(self, ticket: str, limits: "Limits", *, lease_s: float) -> None:
        now = time.monotonic() * 1000
        with self.lock:
            for name, _rpm, _tpm, par in limits:
                scope = self.scopes[name]
                if par is not None and ticket in scope.in_flight:
                    scope.in_flight[ticket] = now + lease_s * 1000
