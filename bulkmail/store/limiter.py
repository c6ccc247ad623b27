"""The pool's :class:`~bulkmail.delivery.limiter.DestinationLimiter` for store
workers: connection seats, GCRA tokens and pauses held in PostgreSQL, so a
destination's cap, rate and backoff hold for every worker together.

Seats are leased to the worker's owner id: its heartbeat keeps them, and a
dead worker's seats expire with its leases and are free again.  With the
worker's :class:`~bulkmail.store.shared_shaping.SharedShaping`, a reply
rule's lowered cap or rate holds for the seats and tokens too, and a seat is
given back only once the actions its session triggered are recorded.
"""

from __future__ import annotations

from ..delivery.limiter import Seat, burst_for
from ..protocol.replies import Reply
from .aio import AsyncStore
from .limits import pause_left
from .shared_shaping import SharedShaping

__all__ = ["PgDestinationLimiter"]


class PgDestinationLimiter:
    """Limits shared through ``store`` by one worker (``holder``)."""

    def __init__(self, store: AsyncStore, holder: str, lease_seconds: float,
                 shaping: SharedShaping | None = None) -> None:
        self.store = store
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.shaping = shaping

    async def acquire(self, destination: str, cap: int) -> Seat | None:
        if self.shaping is not None:
            cap = self.shaping.cap(destination, cap)
        slots = await self.store.acquire_seats(destination, cap, self.holder, self.lease_seconds)
        return (destination, slots[0]) if slots else None

    async def release(self, seat: Seat) -> None:
        assert isinstance(seat, tuple)
        destination, slot = seat
        if self.shaping is not None:  # what this session triggered is known to all first
            await self.shaping.flush()
        await self.store.release_seats(destination, [slot], self.holder)

    async def take(self, destination: str, rate: float, burst: int,
                   wanted: int) -> tuple[int, float]:
        if self.shaping is not None:
            rate = self.shaping.rate(destination, rate)
            burst = min(burst, burst_for(rate))
        grant = await self.store.take_tokens(destination, rate, burst, wanted)
        return grant.granted, grant.wait

    async def paused(self, destination: str) -> float:
        # by the server's clock: workers' clocks may disagree, its does not
        return await self.store.call(lambda s: pause_left(s.db, destination))

    async def pause(self, destination: str, seconds: float, reply: Reply | None) -> None:
        await self.store.pause_destination(
            destination, seconds,
            code=None if reply is None else reply.code,
            enhanced=None if reply is None else reply.enhanced,
            reply=None if reply is None else reply.text,
        )
