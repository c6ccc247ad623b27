"""Resolving domains ahead of sending: a queue, worked by one loop or a crew.

The engine feeds the domains of recipients it will send to soon; a router
resolves them from here, so lookups overlap delivery to the current
domains, and reports each outcome through a callback.  Never a task per
domain: a loop that spawned one paid ~1 KB and a scheduler pass for each of
a 100,000-domain list.  :class:`~bulkmail.routing.MXRouter` takes domains
one by one (:meth:`PrefetchQueue.take`) into its window of queries;
:class:`~bulkmail.tls_policy.router.PolicyRouter` makes plans (one TXT
lookup per domain under MTA-STS) with a fixed crew (:meth:`PrefetchQueue.run`),
each member taking its next domain as soon as one is done.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


class PrefetchQueue(Generic[T]):
    """Domains waiting to be resolved ahead, in order, without repeats."""

    def __init__(self, limit: int) -> None:
        #: domains queued at most (more are refused: the caller resolves them itself)
        self.limit = limit
        # the queue in order, and what is in it: a dict taken from the front
        # cost a scan over its deleted slots per take
        self._ahead: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._working: set[str] = set()  # taken from the queue, being resolved
        self._wakeup = trio.lowlevel.ParkingLot()
        #: called after each ``add`` (a resolving loop that waits for replies
        #: and for work at once: :class:`~bulkmail.dns_client.QueryWindow.wake`)
        self.on_add: Callable[[], object] | None = None

    def __contains__(self, domain: str) -> bool:
        """Queued, or taken and being resolved."""
        return domain in self._queued or domain in self._working

    def add(self, domain: str) -> bool:
        """Queue ``domain`` (never waits); False when the queue is full."""
        if len(self._queued) >= self.limit:
            return False
        self._queued.add(domain)
        self._ahead.append(domain)
        if self._wakeup:  # (nobody parked, most of the time: no unpark to pay for)
            self._wakeup.unpark()
        if self.on_add is not None:
            self.on_add()
        return True

    def take(self) -> str | None:
        """The next queued domain, now being resolved until :meth:`done`
        (None when the queue is empty)."""
        if not self._ahead:
            return None
        domain = self._ahead.popleft()
        self._queued.discard(domain)
        if not self._queued:
            self._queued = set()  # a set keeps its peak's table when emptied
        self._working.add(domain)
        return domain

    def put_back(self, domain: str) -> None:
        """Return a taken domain to the front (it could not be sent yet)."""
        self._working.discard(domain)
        self._queued.add(domain)
        self._ahead.appendleft(domain)

    def has_queued(self) -> bool:
        """Domains wait in the queue (not counting those being resolved)."""
        return bool(self._ahead)

    def room(self) -> int:
        """How many more domains ``add`` would take now."""
        return self.limit - len(self._queued)

    def done(self, domain: str) -> None:
        """``domain`` (from :meth:`take`) is resolved, or nobody resolves it now."""
        self._working.discard(domain)

    async def wait(self) -> None:
        """Until a domain is queued."""
        while not self._ahead:
            await self._wakeup.park()

    async def run(
        self, resolve: Callable[[str], Awaitable[T]], crew: int,
        on_done: Callable[[str, T | E], object] | None, failure: type[E],
    ) -> None:
        """Resolve queued domains with ``crew`` tasks until cancelled, each
        outcome to ``on_done(domain, outcome)``: what ``resolve`` returns, or
        the ``failure`` it raised (a domain's own failure, e.g. no MX: the
        router caches it too; anything else ends the crew)."""
        async def member() -> None:
            while True:
                await self.wait()
                domain = self.take()
                assert domain is not None
                outcome: T | E
                try:
                    outcome = await resolve(domain)
                except failure as exc:
                    outcome = exc
                finally:
                    self.done(domain)
                if on_done is not None:
                    on_done(domain, outcome)

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, crew)):
                nursery.start_soon(member)
