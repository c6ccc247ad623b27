"""The store from trio: calls run in worker threads behind a CapacityLimiter, each
on a connection of its own, and results reach the database in group commits.

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

from ..journal.base import Outcome
from .errors import StoreError
from .leases import IN_DOUBT, Claim, Write
from .limits import Pause, TokenGrant
from .store import PgStore

__all__ = ["AsyncStore", "StoreWriter", "keep_leases"]

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
    async def open(cls, url: str, *, connections: int = 3,
                   schema: str | None = None) -> AsyncStore:
        """Connect ``connections`` times (the first also migrates the schema)."""
        stores: list[PgStore] = []
        try:
            for _ in range(connections):
                stores.append(await trio.to_thread.run_sync(
                    lambda: PgStore(url, schema=schema)))
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


class StoreWriter:
    """Group commit of one worker's writes: results and in-doubt marks of many
    tasks, one database transaction every few milliseconds.

    ``run()`` commits in the background (start it in the worker's nursery).
    Results are fire and forget (``submit_outcomes``); an in-doubt mark waits
    for its commit and says which recipients the worker still leases -- send
    the end of data only if that is all of them.  Writes for recipients taken
    over by another worker are not applied; their addresses are counted in
    ``lost`` and passed to ``on_lost``.  A failed commit is fatal: it
    propagates out of ``run()`` and every later call raises StoreError.
    """

    def __init__(
        self,
        store: AsyncStore,
        owner: str,
        *,
        max_batch: int = 500,
        max_delay: float = 0.005,
        on_lost: Callable[[int, list[str]], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self.store = store
        self.owner = owner
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.on_lost = on_lost
        #: group commits done, and results not written because the lease was lost
        self.commits = 0
        self.lost = 0
        self._queue: list[tuple[Write, _Waiter | None]] = []
        self._queued = 0
        self._urgent = 0
        self._closing = False
        self._running = False
        self._error: Exception | None = None
        self._wakeup = trio.Event()  # set: run() should look at the queue now
        self._progress = trio.Event()  # set (and replaced) after each commit, and when run() stops
        self._commit_lock = trio.Lock()

    @property
    def pending(self) -> int:
        """Addresses queued and not yet committed."""
        return self._queued

    def submit_outcomes(self, job: int, addresses: Sequence[str], outcome: Outcome) -> None:
        """Queue results for ``addresses`` (releasing their leases); fire and forget."""
        self._check()
        self._enqueue((job, list(addresses), outcome, True), None)

    async def mark_in_doubt(self, job: int, addresses: Sequence[str]) -> set[str]:
        """Commit ``addresses`` as in doubt; the ones this worker still leases."""
        self._check()
        waiter = _Waiter()
        self._enqueue((job, list(addresses), IN_DOUBT, False), waiter)
        self._urgent += 1
        try:
            await self._wait(waiter)
        finally:
            self._urgent -= 1
        return waiter.applied

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        waiter = _Waiter()
        self._enqueue((0, [], IN_DOUBT, False), waiter)
        await self._wait(waiter)

    async def _wait(self, waiter: _Waiter) -> None:
        """Until ``waiter``'s write is committed: by run(), or here when run()
        is not running (a shielded flush after a cancellation still saves)."""
        await trio.lowlevel.checkpoint()
        while not waiter.done.is_set():
            self._check()
            if self._running:
                await self._progress.wait()
            else:
                await self._commit_batch()
        self._check()

    async def aclose(self) -> None:
        """Flush, then let ``run()`` return."""
        await self.flush()
        self._closing = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("StoreWriter.run() is already running")
        self._check()
        self._running = True
        try:
            task_status.started()
            while not (self._closing and not self._queue):
                if not self._queue:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                if self._queued < self.max_batch and not self._urgent and not self._closing:
                    with trio.move_on_after(self.max_delay):
                        await self._wakeup.wait()
                    self._wakeup = trio.Event()
                await self._commit_batch()
        finally:
            self._running = False
            self._signal()  # waiters re-check: commit themselves, or raise

    def _enqueue(self, write: Write, waiter: _Waiter | None) -> None:
        self._queue.append((write, waiter))
        self._queued += len(write[1])
        if waiter is not None or self._queued >= self.max_batch or len(self._queue) == 1:
            self._wakeup.set()

    async def _commit_batch(self) -> None:
        async with self._commit_lock:
            self._check()
            batch: list[tuple[Write, _Waiter | None]] = []
            size = 0
            for item in self._queue:
                if size >= self.max_batch:
                    break
                batch.append(item)
                size += len(item[0][1])
            if not batch:
                return
            writes = [write for write, _ in batch if write[1]]
            try:
                applied = await self.store.call(
                    lambda s: s.commit_writes(self.owner, writes)
                ) if writes else []
            except Exception as exc:  # a cancellation before the thread started is no failure
                self._error = exc
                self._signal()
                raise
            del self._queue[: len(batch)]
            self._queued -= size
            self.commits += 1
            done = iter(applied)
            for (job, addresses, _, release), waiter in batch:
                if not addresses:
                    if waiter is not None:
                        waiter.done.set()
                    continue
                wrote = next(done)
                if waiter is not None:
                    waiter.applied = wrote
                    waiter.done.set()
                elif release and len(wrote) < len(addresses):
                    lost = [a for a in addresses if a not in wrote]
                    self.lost += len(lost)
                    if self.on_lost is not None:
                        self.on_lost(job, lost)
            self._signal()

    def _signal(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _check(self) -> None:
        if self._error is not None:
            raise StoreError(f"job store writer failed: {self._error!r}") from self._error


class _Waiter:
    __slots__ = ("applied", "done")

    def __init__(self) -> None:
        self.applied: set[str] = set()
        self.done = trio.Event()
