"""The store from trio: calls run in worker threads behind a CapacityLimiter, each
on a connection of its own (the group commits are in ``writer.py``).

psycopg's async API needs asyncio, and a synchronous call in the event loop
would stall every SMTP session for a round trip to the database (or for
ever, if the network to it hangs).  So every call is
``trio.to_thread.run_sync``: a slow database slows the workers' bookkeeping,
never their sessions.  Several connections let a heartbeat or a claim pass a
long group commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from .leases import Claim
from .limits import Pause, TokenGrant
from .store import PgStore

__all__ = ["AsyncStore", "keep_leases"]

T = TypeVar("T")


class AsyncStore:
    """A small pool of :class:`PgStore` connections used from trio.

    A call waits for a free connection (the limiter), then runs in a thread.
    Cancellation waits for the call to finish (the thread cannot be stopped
    mid-transaction, and abandoning it could leave a lease unknown).
    """

    def __init__(self, stores: Sequence[PgStore]) -> None:
        if not stores:
            raise ValueError("AsyncStore needs at least one connection")
        self._free = list(stores)
        self._all = tuple(stores)
        self._limiter = trio.CapacityLimiter(len(stores))

    @classmethod
    async def open(cls, url: str, *, connections: int = 3, schema: str | None = None,
                   generic_plans: bool = False) -> AsyncStore:
        """Connect ``connections`` times (the first also migrates the schema);
        ``generic_plans``: see :meth:`~bulkmail.store.connection.Database.use_generic_plans`."""
        stores: list[PgStore] = []
        try:
            for _ in range(connections):
                stores.append(await trio.to_thread.run_sync(
                    lambda: PgStore(url, schema=schema, generic_plans=generic_plans)))
        except BaseException:
            for store in stores:
                store.close()
            raise
        return cls(stores)

    async def call(self, fn: Callable[[PgStore], T]) -> T:
        """``fn(store)`` in a worker thread, on a connection nobody else is using."""
        async with self._limiter:
            store = self._free.pop()
            try:
                return await trio.to_thread.run_sync(fn, store)
            finally:
                self._free.append(store)

    async def claim(self, owner: str, max_items: int, lease_seconds: float, *,
                    job: int | None = None) -> Claim | None:
        return await self.call(lambda s: s.claim(owner, max_items, lease_seconds, job=job))

    async def claim_many(self, owner: str, per_destination: int, lease_seconds: float, *,
                         job: int | None = None, max_items: int | None = None,
                         max_destinations: int = 1) -> list[Claim]:
        return await self.call(lambda s: s.claim_many(
            owner, per_destination, lease_seconds, job=job, max_items=max_items,
            max_destinations=max_destinations))

    async def heartbeat(self, owner: str, lease_seconds: float) -> int:
        return await self.call(lambda s: s.heartbeat(owner, lease_seconds))

    async def release(self, owner: str, job: int | None = None,
                      addresses: Sequence[str] | None = None) -> int:
        return await self.call(lambda s: s.release(owner, job, addresses))

    async def finish_if_done(self, job: int) -> bool:
        return await self.call(lambda s: s.finish_if_done(job))

    async def acquire_seats(self, destination: str, cap: int, holder: str,
                            lease_seconds: float, count: int = 1) -> list[int]:
        return await self.call(
            lambda s: s.acquire_seats(destination, cap, holder, lease_seconds, count))

    async def release_seats(self, destination: str, slots: Sequence[int], holder: str) -> int:
        return await self.call(lambda s: s.release_seats(destination, slots, holder))

    async def take_tokens(self, destination: str, rate: float, burst: int, wanted: int, *,
                          now: float | None = None) -> TokenGrant:
        return await self.call(lambda s: s.take_tokens(destination, rate, burst, wanted, now=now))

    async def pause_destination(self, destination: str, seconds: float, *,
                                code: int | None = None, enhanced: str | None = None,
                                reply: str | None = None) -> Pause:
        return await self.call(lambda s: s.pause_destination(
            destination, seconds, code=code, enhanced=enhanced, reply=reply))

    async def paused(self, destination: str) -> Pause | None:
        return await self.call(lambda s: s.paused(destination))

    async def aclose(self) -> None:
        """Close every connection (waits for calls in progress)."""
        async with self._limiter:
            pass
        for store in self._all:
            await trio.to_thread.run_sync(store.close)


async def keep_leases(
    store: AsyncStore,
    owner: str,
    lease_seconds: float,
    *,
    interval: float | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Heartbeat ``owner``'s leases every ``interval`` (a third of the lease by
    default) until cancelled; the first one before ``started()``.

    A failed heartbeat raises out of here (StoreError): the worker must stop
    taking work -- its leases run out and other workers take its recipients
    over, so stopping loses nothing, while going on could send twice.
    """
    period = lease_seconds / 3 if interval is None else interval
    if not 0 < period < lease_seconds:
        raise ValueError("the heartbeat interval must be positive and shorter than the lease")
    await store.heartbeat(owner, lease_seconds)
    task_status.started()
    while True:
        await trio.sleep(period)
        await store.heartbeat(owner, lease_seconds)
