"""Every domain to one smarthost (``--relay``): the router with nothing to look up per domain."""

from __future__ import annotations

import math

import trio

from .errors import synthetic_reply
from .mx_hosts import order_addresses
from .protocol.replies import Reply
from .routing import Destination, Host, Resolved, is_ip, unwrap_route

#: how long a relay's resolved addresses (or failure to resolve) are reused:
#: getaddrinfo gives no TTL
RELAY_ADDRESS_TTL = 300.0
RELAY_FAILURE_TTL = 30.0


class RelayRouter:
    """Every domain goes to one smarthost; a host name is resolved lazily."""

    prefetches = False  # one destination for every domain: nothing to resolve ahead

    def __init__(self, host: str, port: int = 25) -> None:
        self.host = host
        self.port = port
        self.key = f"relay:{host}:{port}"
        self._outcome: Destination | Reply | None = None
        self._expires = -math.inf
        if is_ip(host):
            self._outcome = Destination(self.key, (Host(host, (host,), port),))
            self._expires = math.inf
        self._lock = trio.Lock()

    async def route(self, domain: str) -> Destination:
        async with self._lock:  # a burst of domains resolves the relay once
            if self._outcome is None or trio.current_time() >= self._expires:
                self._outcome = outcome = await self._resolve()
                ok = isinstance(outcome, Destination)
                self._expires = trio.current_time() + (
                    RELAY_ADDRESS_TTL if ok else RELAY_FAILURE_TTL
                )
            return unwrap_route(self._outcome)

    def peek(self, domain: str) -> Destination | None:
        outcome, expires = self._outcome, self._expires
        # asked once per recipient: an IP relay never expires, so no clock read
        if isinstance(outcome, Destination) and (
            expires == math.inf or trio.current_time() < expires
        ):
            return outcome
        return None

    def prefetch(self, domain: str) -> bool:
        return False  # one smarthost: nothing per domain to resolve ahead

    async def run_prefetcher(self, on_resolved: Resolved | None = None) -> None:
        await trio.sleep_forever()

    async def _resolve(self) -> Destination | Reply:
        try:
            infos = await trio.socket.getaddrinfo(
                self.host, self.port, type=trio.socket.SOCK_STREAM
            )
        except OSError as exc:
            return synthetic_reply(451, "4.4.3", f"cannot resolve relay {self.host}: {exc}")
        addresses = order_addresses(str(info[4][0]) for info in infos)
        if not addresses:
            return synthetic_reply(451, "4.4.4", f"relay {self.host} has no address")
        return Destination(self.key, (Host(self.host, addresses, self.port),))
