"""The pool's :class:`~bulkmail.delivery.limiter.DestinationLimiter` for store
workers: connection seats, GCRA tokens and pauses held in PostgreSQL, so a
destination's cap, rate and backoff hold for every worker together.

Seats are leased to the worker's owner id: its heartbeat keeps them, and a
dead worker's seats expire with its leases and are free again.  While other
workers want a destination's seats, ``keep_shares`` tells this worker's pools
how many of theirs are beyond its fair share (``surplus``): that many sessions
end after their transaction in flight and give their seats back.  A pool at
its share polls for a seat without a query, but for one a second that keeps
its want alive (the polls were most of a worker's queries with three workers).
With the worker's :class:`~bulkmail.store.shared_shaping.SharedShaping`, a reply
rule's lowered cap or rate holds for the seats and tokens too, and a seat is
given back only once the actions its session triggered are recorded.
"""

from __future__ import annotations

import functools

import trio

from ..delivery.limiter import Seat, burst_for
from ..protocol.replies import Reply
from .aio import AsyncStore
from .limits import WANT_SECONDS, pause_left
from .shared_shaping import SharedShaping
from .store import PgStore

__all__ = ["PgDestinationLimiter"]


class PgDestinationLimiter:
    """Limits shared through ``store`` by one worker (``holder``)."""

    def __init__(self, store: AsyncStore, holder: str, lease_seconds: float,
                 shaping: SharedShaping | None = None) -> None:
        self.store = store
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.shaping = shaping
        self._caps: dict[str, int] = {}  #: the cap last asked for, per destination
        self._surplus: dict[str, int] = {}
        #: destinations where it holds its whole share (the last census), and
        #: when it next asks the database for one of their seats anyway
        self._full: set[str] = set()
        self._quiet_until: dict[str, float] = {}

    async def acquire(self, destination: str, cap: int) -> Seat | None:
        if self.shaping is not None:
            cap = self.shaping.cap(destination, cap)
        self._caps[destination] = cap
        now = trio.current_time()
        if destination in self._full and now < self._quiet_until.get(destination, 0.0):
            return None  # at its share: asking again only keeps its want alive
        self._quiet_until[destination] = now + WANT_SECONDS / 3
        slots = await self.store.acquire_seats(destination, cap, self.holder, self.lease_seconds)
        return (destination, slots[0]) if slots else None

    async def release(self, seat: Seat) -> None:
        assert isinstance(seat, tuple)
        destination, slot = seat
        if self.shaping is not None:  # what this session triggered is known to all first
            await self.shaping.flush()
        if self._surplus.get(destination):
            self._surplus[destination] -= 1
        self._full.discard(destination)  # below its share now: the next acquire asks
        await self.store.release_seats(destination, [slot], self.holder)

    def surplus(self, destination: str) -> int:
        return self._surplus.get(destination, 0)

    async def keep_shares(self, interval: float = 0.25) -> None:
        """Every ``interval``, learn how many seats beyond its fair share this
        worker holds, per destination (until cancelled)."""
        seen: dict[str, int] = {}
        while True:
            await trio.sleep(interval)
            ask = functools.partial(PgStore.seat_shares, holder=self.holder,
                                    caps=dict(self._caps))
            shares = await self.store.call(ask)
            self._full = {d for d, (held, share) in shares.items() if held >= share}
            found = {d: max(0, held - share) for d, (held, share) in shares.items()}
            # a surplus seen twice in a row: a share that swings for a moment
            # (a want just lapsed or came) ends no session
            self._surplus = {d: min(n, seen.get(d, 0)) for d, n in found.items() if n}
            seen = found

    async def take(self, destination: str, rate: float, burst: int,
                   wanted: int) -> tuple[int, float]:
        if self.shaping is not None:
            rate = self.shaping.rate(destination, rate)
            burst = min(burst, burst_for(rate))
        grant = await self.store.take_tokens(destination, rate, burst, wanted)
        return grant.granted, grant.wait

    async def paused(self, destination: str) -> float:
        if destination in self._full:
            return 0.0  # a seat poller at its share: acquire() answers alone (a pause is
            # refused there too), and no query per poll
        # by the server's clock: workers' clocks may disagree, its does not
        return await self.store.call(lambda s: pause_left(s.db, destination))

    async def pause(self, destination: str, seconds: float, reply: Reply | None) -> None:
        await self.store.pause_destination(
            destination, seconds,
            code=None if reply is None else reply.code,
            enhanced=None if reply is None else reply.enhanced,
            reply=None if reply is None else reply.text,
        )
