"""A worker's group commits: in-doubt marks on a fast lane, results on a slow one.

A mark is on every transaction's critical path (the end of data waits for its
commit), a result on nobody's.  So marks get a lane of their own: a mark is
committed within ``MARK_LINGER`` (half a millisecond, for the marks of other
sessions to share the commit), on a second connection if a commit is already
in flight, and marks that arrive meanwhile share the next commit; results linger a few
milliseconds to fill bigger commits on another connection.  Each commit is one
statement (``outcomes.apply_fenced``).  Measured in scenario e (one worker, 32
sessions at 20 ms): marks queued behind one shared commit waited 47-107 ms.
Results queued when a mark's commit starts ride along with it (at most
``RIDE_ALONG`` addresses, a few hundred microseconds more on the mark's path):
their own commit would have cost about as much again, for nothing.

The lanes never reorder one recipient's writes: its result is submitted only
after its mark committed (the end of data waited for it), and a recipient
comes back to this worker only through a claim, after its result committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import trio

from ..journal.base import Outcome
from .aio import AsyncStore
from .errors import StoreError
from .leases import IN_DOUBT, Write

__all__ = ["StoreWriter"]


#: results that may ride along with a mark's commit: the mark waits for them too
RIDE_ALONG = 64

#: how long a mark waits for others to share its commit.  Scenario e at
#: --scale 0.25 --connections 1 (one worker, 4 sessions at 20 ms): 0 ms ->
#: ~9,800 commits for 50,000 marks, 0.5 ms -> ~7,500 (1 ms: ~7,100), the rate
#: unchanged within the noise (591-683/s vs 640-652/s); a commit costs
#: PostgreSQL ~220 us of CPU for its WAL flush alone on that machine
MARK_LINGER = 0.0005


class _Waiter:
    """A mark's wait: woken once, by its commit (``committed``) or by the
    writer failing or stopping -- not by every other commit, as a wait on
    ``_progress`` is (a handful of needless wake-ups per commit: 16 sessions
    marking through 2 ms commits spent 88-120 -> 70-103 us of CPU per mark
    and result, three runs each)."""

    __slots__ = ("applied", "committed", "done")

    def __init__(self) -> None:
        self.applied: set[str] = set()
        self.committed = False
        self.done = trio.Event()


_Queued = tuple[int, Write, _Waiter | None]  # (seq, write, waiter)


class _Lane:
    """Writes waiting for a commit, and how many commits run (at most ``parallel``)."""

    def __init__(self, parallel: int, linger: float) -> None:
        self.parallel = parallel
        self.linger = linger  #: how long a write waits for others to share its commit
        self.queue: list[_Queued] = []
        self.queued = 0  #: addresses in the queue
        self.committing: dict[int, int] = {}  #: first seq of each commit running -> addresses
        self.next_seq = 0
        self.wakeup = trio.Event()

    def add(self, write: Write, waiter: _Waiter | None) -> None:
        self.queue.append((self.next_seq, write, waiter))
        self.next_seq += 1
        self.queued += len(write[1])
        self.wakeup.set()

    def take(self, max_batch: int, *, within: bool = False) -> list[_Queued]:
        """The next batch, moved from the queue to ``committing``: at least one
        write (``within``: none that would take it past ``max_batch``)."""
        size, n = 0, 0
        for _, write, _ in self.queue:
            if n and (size >= max_batch or (within and size + len(write[1]) > max_batch)):
                break
            size += len(write[1])
            n += 1
        batch = self.queue[:n]
        del self.queue[:n]
        self.queued -= size
        self.committing[batch[0][0]] = size
        return batch

    def committed_below(self) -> int:
        """Every write with a lower seq is committed."""
        firsts = list(self.committing)
        if self.queue:
            firsts.append(self.queue[0][0])
        return min(firsts, default=self.next_seq)

    def can_start(self) -> bool:
        return bool(self.queue) and len(self.committing) < self.parallel


class StoreWriter:
    """Group commits of one worker's writes: results and in-doubt marks of many
    tasks, marks committed at once (two commits at a time), results every few
    milliseconds.

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
        mark_commits: int = 2,
        mark_linger: float = MARK_LINGER,
        on_lost: Callable[[int, list[str]], None] | None = None,
    ) -> None:
        if max_batch < 1 or mark_commits < 1:
            raise ValueError("max_batch and mark_commits must be positive")
        self.store = store
        self.owner = owner
        self.max_batch = max_batch
        self.on_lost = on_lost
        #: group commits done, and results not written because the lease was lost
        self.commits = 0
        self.lost = 0
        self._marks = _Lane(mark_commits, mark_linger)
        self._results = _Lane(1, max_delay)
        self._closing = False
        self._hurry = 0  #: flushes waiting
        self._running = False
        self._error: Exception | None = None
        self._progress = trio.Event()  # set (and replaced) after each commit, and when run() stops

    @property
    def max_delay(self) -> float:
        return self._results.linger

    @property
    def pending(self) -> int:
        """Addresses queued or being committed, not committed yet."""
        lanes = (self._marks, self._results)
        return sum(lane.queued + sum(lane.committing.values()) for lane in lanes)

    def submit_outcomes(self, job: int, addresses: Sequence[str], outcome: Outcome) -> None:
        """Queue results for ``addresses`` (releasing their leases); fire and forget."""
        self._check()
        self._results.add((job, list(addresses), outcome, True), None)

    async def mark_in_doubt(self, job: int, addresses: Sequence[str]) -> set[str]:
        """Commit ``addresses`` as in doubt; the ones this worker still leases."""
        self._check()
        waiter = _Waiter()
        self._marks.add((job, list(addresses), IN_DOUBT, False), waiter)
        if self._running:
            await waiter.done.wait()
        if not waiter.committed:  # run() failed or stopped: commit here, or raise
            await self._wait(self._marks, lambda: waiter.committed)
        self._check()
        return waiter.applied

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        marks, results = self._marks.next_seq, self._results.next_seq
        self._hurry += 1  # results linger no longer
        self._results.wakeup.set()
        try:
            await self._wait(self._marks, lambda: self._marks.committed_below() >= marks)
            await self._wait(self._results, lambda: self._results.committed_below() >= results)
        finally:
            self._hurry -= 1

    async def _wait(self, lane: _Lane, done: Callable[[], bool]) -> None:
        """Until ``done()``: committed by run(), or here when run() is not
        running (a shielded flush after a cancellation still saves)."""
        await trio.lowlevel.checkpoint()
        while not done():
            self._check()
            if not self._running and lane.can_start():
                await self._commit([(lane, lane.take(self.max_batch))])
            else:
                await self._progress.wait()
        self._check()

    async def aclose(self) -> None:
        """Flush, then let ``run()`` return."""
        await self.flush()
        self._closing = True
        self._marks.wakeup.set()
        self._results.wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("StoreWriter.run() is already running")
        self._check()
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drive, self._marks, nursery)
                nursery.start_soon(self._drive, self._results, nursery)
                task_status.started()
        except BaseExceptionGroup:
            if self._error is not None:  # the failed commit's own error, as callers expect
                raise self._error from None
            raise
        finally:
            self._running = False
            _wake_marks(self._marks.queue)
            self._signal()  # waiters re-check: commit themselves, or raise

    async def _drive(self, lane: _Lane, nursery: trio.Nursery) -> None:
        """Start the lane's commits as its writes come, until closing and empty."""
        while not (self._closing and not lane.queue):
            if not lane.queue:
                await lane.wakeup.wait()
                lane.wakeup = trio.Event()
                continue
            if not lane.can_start():
                await self._progress.wait()
                continue
            if lane.linger and not self._in_a_hurry(lane):
                with trio.move_on_after(lane.linger):
                    while not self._in_a_hurry(lane):
                        await lane.wakeup.wait()
                        lane.wakeup = trio.Event()
            if lane.can_start():
                batches = [(lane, lane.take(self.max_batch))]
                results = self._results.queue
                if lane is self._marks and results and len(results[0][1][1]) <= RIDE_ALONG:
                    batches.append((self._results, self._results.take(RIDE_ALONG, within=True)))
                nursery.start_soon(self._commit, batches)
                await trio.lowlevel.checkpoint()

    def _in_a_hurry(self, lane: _Lane) -> bool:
        """Commit the lane's writes now: a full batch, a flush, or closing."""
        return lane.queued >= self.max_batch or bool(self._hurry) or self._closing

    async def _commit(self, batches: list[tuple[_Lane, list[_Queued]]]) -> None:
        """One commit of the lanes' batches (a mark's with the results queued
        meanwhile riding along)."""
        writes = [write for _, batch in batches for _, write, _ in batch if write[1]]
        try:
            self._check()
            applied = await self.store.call(
                lambda s: s.commit_writes(self.owner, writes)
            ) if writes else []
        except BaseException as exc:
            for lane, batch in batches:
                del lane.committing[batch[0][0]]
                _wake_marks(batch)
                if not isinstance(exc, Exception):  # cancelled before the thread started:
                    lane.queue[:0] = batch  # back in line, for a flush
                    lane.queued += sum(len(write[1]) for _, write, _ in batch)
            if isinstance(exc, Exception):
                self._error = self._error or exc
            self._signal()
            raise
        self.commits += 1
        done = iter(applied)
        for lane, batch in batches:
            del lane.committing[batch[0][0]]
            for _, (job, addresses, _, release), waiter in batch:
                wrote = next(done) if addresses else set()
                if waiter is not None:
                    waiter.applied = wrote
                    waiter.committed = True
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


def _wake_marks(entries: Iterable[_Queued]) -> None:
    """Wake the marks among ``entries`` that their commit will not: each
    re-checks, then raises or commits itself."""
    for _, _, waiter in entries:
        if waiter is not None:
            waiter.done.set()
