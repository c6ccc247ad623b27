"""Group commit: many tasks' state changes, one journal transaction at a time.

A transaction costs about the same for one change as for hundreds, so the
writer lets changes gather for a few milliseconds (or until ``max_batch``)
and commits them together, in the event loop (see ``_commit_batch``).  Only a
task that must know its changes are durable -- the in-doubt mark before an end
of data -- waits; everyone else submits and moves on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Sequence

import trio

from ..results import FINAL
from .base import Journal, JournalError, Outcome, StateChange

__all__ = ["JournalWriter"]

#: addresses that share one outcome, queued for the same commit
Group = tuple[list[str], Outcome]

#: addresses that trigger a commit without waiting out ``max_delay``, for a
#: journal that commits inline (SQLite).  In addresses, though there a commit
#: costs by rows (~3 us each, against ~20 us for the commit; a transaction's
#: recipients share a row): at 500, a newsletter of 50 recipients a
#: transaction, each recipient marked and then delivered, committed every ~5
#: transactions besides its marks' commits -- 1,699 commits for 400,000
#: recipients, 1,494 at 5,000 (all of them marks'), client CPU -8..-13%
#: (alternating, 6 rounds).
MAX_BATCH = 5_000
#: ... and for a journal that commits in a worker thread (a database server,
#: which upserts every address: a bigger commit would hold in-doubt marks
#: waiting behind it; not measured at 5,000, so kept)
MAX_BATCH_THREADED = 500

# Why groups merge across other groups (``_enqueue``): a commit's cost is
# mostly its rows (~3 us each against ~20 us for the commit itself, measured
# with SQLite), and a run's changes alternate -- a transaction's in-doubt mark,
# another's delivery, the next mark -- so merging only consecutive submits
# left one row per transaction: 60,000 rows in 3,128 commits for 30,000
# one-recipient messages.  Marks share one Outcome object, and so do
# deliveries with the same reply (``durable.OutcomeCache``), so merging every
# submit of an outcome into the queue's open group for it leaves a row or two
# per commit (6,250 rows in 3,127 commits).  Moving a change earlier is safe
# unless it passes another change of the same address (a retry's new mark
# must never land before the previous attempt's "deferred"): ``_last`` knows
# the newest group of every queued address, and a change that would pass one
# starts a new group.  (A final outcome is checked but not noted: nothing
# follows it for that address in a run, and noting a million deliveries was
# 3% of a 50-recipient newsletter's run.)

#
# Why run() lingers from the oldest queued change, not from its own wakeup:
# with in-doubt marks committing inline every few hundred microseconds (each
# takes the results queued so far along), the queue empties under run()'s
# feet.  When every first change into an empty queue woke run() and ended its
# linger, it committed the few results since the last mark on their own:
# 1,345 of 3,669 commits for 30,000 personalised messages, and ~3,000 task
# steps of run().  Lingering until the oldest queued change is ``max_delay``
# old (a change queued during a linger does not wake it) keeps the same bound
# on how long a result waits, and leaves those results to ride along with
# the next mark.

class JournalWriter:
    """Batches state changes from many tasks into group commits.

    ``run()`` commits in the background; start it in the engine's nursery.
    ``submit`` never blocks and never bounds the queue (it is called from
    synchronous result callbacks; the engine bounds the recipients in flight,
    and each one's in-doubt mark waits for a commit).  Producers without such
    a bound use ``submit_async``, which waits while ``max_pending`` changes are
    uncommitted.  A failed commit is fatal: it propagates out of ``run()`` and
    every later call raises :class:`JournalError`.

    If ``run()`` is not running (not started yet, or cancelled), ``flush`` and
    the waiting calls commit in the calling task instead, so a shielded
    ``aclose()`` in a ``finally`` still saves everything after a cancellation.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        max_batch: int | None = None,
        max_delay: float = 0.005,
        max_pending: int = 50_000,
    ) -> None:
        if max_batch is None:
            max_batch = MAX_BATCH if journal.commits_inline else MAX_BATCH_THREADED
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be positive")
        self.journal = journal
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_pending = max_pending
        #: group commits done so far
        self.commits = 0
        self._queue: deque[Group] = deque()  # uncommitted, oldest first
        self._queued = 0  # addresses in the queue
        self._submitted = 0  # addresses' changes ever submitted ...
        self._committed = 0  # ... and ever committed
        self._made = 0  # groups ever queued: the newest one's number
        self._done = 0  # the newest committed group's number (groups commit in order)
        self._open: dict[int, tuple[int, list[str]]] = {}  # id(outcome) -> its newest group
        self._last: dict[str, int] = {}  # a queued address -> its newest group's number
        self._urgent = 0  # tasks waiting for a commit: don't linger gathering
        self._gathering = False  # run() lingers for a group to gather (see run())
        self._since = 0.0  # when the oldest change in the queue was queued (trio clock)
        self._running = False
        self._closing = False
        self._error: Exception | None = None
        self._wakeup = trio.Event()  # set: run() should look at the queue now
        #: set (and dropped) after each commit or stop; made only when a task
        #: waits for one (an inline journal's marks commit themselves, and a
        #: new Event per commit was ~3,000 attrs constructions a 30,000-message run)
        self._progress: trio.Event | None = None
        self._commit_lock = trio.Lock()  # one committer at a time, run() or a flush

    @property
    def failed(self) -> bool:
        """A commit failed: every later call raises; callbacks that cannot
        raise (result recorders) check this instead and stop recording."""
        return self._error is not None

    @property
    def pending(self) -> int:
        """Changes submitted but not yet committed (backpressure information)."""
        return self._submitted - self._committed

    def __repr__(self) -> str:
        state = "failed" if self._error else "running" if self._running else "stopped"
        return f"<JournalWriter {state}: {self.pending} pending, {self.commits} commits>"

    def submit(self, change: StateChange) -> None:
        """Queue a change for the next group commit; fire and forget."""
        self.submit_outcome(change.address, change.outcome)

    def submit_outcome(self, address: str, outcome: Outcome) -> None:
        """Queue ``address`` moving to ``outcome``; fire and forget."""
        self.submit_outcomes([address], outcome)

    def submit_outcomes(self, addresses: list[str], outcome: Outcome) -> None:
        """Queue ``addresses`` moving to ``outcome``; fire and forget.

        Submits of the *same* outcome object share one group while the queue
        waits, which the journal stores as one row (see ``_enqueue``).  The
        list is kept, not copied, and may grow.
        """
        if self._error is not None:  # (inline test: this runs per transaction)
            self._check()
        self._enqueue(addresses, outcome)
        if ((self._queued == len(addresses) and not self._gathering)
                or self._queued >= self.max_batch):
            self._wakeup.set()

    def _enqueue(self, addresses: list[str], outcome: Outcome) -> int:
        """Into the open group of ``outcome`` unless that would move a change
        of some address before an earlier one (see the comment at the top);
        the number of the group it went to."""
        last = self._last
        found = self._open.get(id(outcome))
        if found is not None:
            number, group = found
            for address in addresses:
                if last.get(address, 0) > number:
                    found = None  # it would pass this address's newer change
                    break
        if found is not None:
            group.extend(addresses)
        else:
            if not self._queue:
                self._since = trio.current_time()  # the linger counts from here
            self._made += 1
            number, group = self._made, addresses
            self._queue.append((group, outcome))
            self._open[id(outcome)] = (number, group)
        if outcome.status not in FINAL:  # nothing follows a final one in a run
            for address in addresses:
                last[address] = number
        self._queued += len(addresses)
        self._submitted += len(addresses)
        return number

    async def submit_async(self, change: StateChange) -> None:
        """Like ``submit``, but first waits while ``max_pending`` changes are uncommitted."""
        await trio.lowlevel.checkpoint()
        while self.pending >= self.max_pending:
            await self._await_progress()
        self.submit(change)

    async def submit_durable(self, changes: Sequence[StateChange]) -> None:
        """Queue ``changes`` and return once the group commit holding them is done."""
        self._check()
        number = self._done
        for change in changes:
            number = max(number, self._enqueue([change.address], change.outcome))
        await self._wait_for(number)

    def submit_durable_outcome(self, addresses: Sequence[str], outcome: Outcome) -> Awaitable[None]:
        """Queue ``addresses`` moving to ``outcome`` now; awaited, returns once
        that is committed.  (A plain method handing back ``_wait_for``'s
        coroutine: one coroutine less for every in-doubt mark.)"""
        if self._error is not None:  # (inline test: this runs per transaction)
            self._check()
        return self._wait_for(self._enqueue(list(addresses), outcome))

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        await self._wait_for(self._made)

    async def aclose(self) -> None:
        """Flush, then let ``run()`` return."""
        await self.flush()
        self._closing = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued changes until ``aclose()``; a commit error propagates from here."""
        if self._running:
            raise RuntimeError("JournalWriter.run() is already running")
        if self._error is not None:
            raise self._error  # a commit failed (perhaps a waiter's own): it propagates here
        self._running = True
        self._closing = False
        try:
            task_status.started()
            while not (self._closing and not self._queue):
                if self._error is not None:
                    raise self._error  # a waiter's own commit failed: fail here too
                if not self._queue:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                # an inline journal's waiters commit themselves (``_wait_for``)
                urgent = self._urgent and not self.journal.commits_inline
                due = self._since + self.max_delay
                if (self._queued < self.max_batch and not urgent and not self._closing
                        and trio.current_time() < due):
                    # let a group gather: a few ms buys hundreds of changes per commit
                    self._gathering = True
                    try:
                        with trio.move_on_at(due):
                            await self._wakeup.wait()
                    finally:
                        self._gathering = False
                    self._wakeup = trio.Event()
                    continue  # (the queue may have been committed meanwhile)
                await self._commit_batch()
        finally:
            self._running = False
            self._signal()  # waiters re-check: commit themselves, or raise

    async def _wait_for(self, number: int) -> None:
        """Until the group numbered ``number`` (and so every older one) is committed.

        With a journal that commits inline, the waiter commits itself instead
        of waking ``run()`` and sleeping until it is done: a durable mark per
        transaction made that two task switches each (48,000 event waits for
        30,000 messages).  It first yields once, so that the marks of the
        other connections answered in the same scheduling round join its
        commit -- and find them committed when they resume, without waiting.
        (Yielding more while other tasks were runnable halved scenario d's
        mark commits, 1,494 -> ~700, with no wall time to show for it: a
        session waits on its mark, and the rounds are not free.)
        """
        self._urgent += 1
        inline = self.journal.commits_inline
        if not inline:
            self._wakeup.set()
        try:
            # not a cancellation point: a waiter whose group run() tried to
            # commit must see that commit's error, not the cancellation that
            # run()'s failure brings (a cancelled caller stops at its next one)
            await trio.lowlevel.cancel_shielded_checkpoint()
            while self._done < number:
                if not inline:
                    await self._await_progress()
                    continue
                try:
                    self._commit_here()
                except Exception:
                    self._check()  # as JournalError, like every other caller
                    raise
            if self._error is not None:  # (inline test: this runs per transaction)
                self._check()
        finally:
            self._urgent -= 1

    async def _await_progress(self) -> None:
        """Wait for one commit by run(), or do one here when run() is not running."""
        self._check()
        if self._running:
            if self._progress is None:
                self._progress = trio.Event()
            await self._progress.wait()
        else:
            await self._commit_batch()

    async def _commit_batch(self) -> None:
        """One group commit: inline (without yielding, so it never holds the
        lock across a checkpoint) or in a worker thread."""
        try:
            if self.journal.commits_inline:
                # In the event loop, not a worker thread: a WAL commit
                # without fsync takes a fraction of a millisecond.  A thread
                # pays off only with a core to spare (the newsletter against
                # Postfix's sink: 5% faster); with none (a million recipients
                # against the project's own sink on 2 cores) it was 18%
                # slower.  Synchronous, so a started commit always completes
                # and counts.
                self._commit_here()
            else:
                async with self._commit_lock:
                    sealed = self._seal()
                    if sealed is None:
                        return
                    batch, size, number = sealed
                    try:
                        # a backend that waits on the network (a database
                        # server) must not stall the event loop; not abandoned
                        # on cancel, so a started commit still completes and counts
                        await trio.to_thread.run_sync(self.journal.record_outcomes, batch)
                    except Exception as exc:
                        self._failed(exc)
                        raise
                    self._finished(size, number)
        except Exception:
            # let the waiters just woken see the error before run() fails
            # the nursery and cancels them
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()
            raise
        await trio.lowlevel.checkpoint()

    def _commit_here(self) -> None:
        """An inline journal's group commit in the calling task, without
        yielding (so no other commit can be underway: only threaded commits
        take the lock).  A failure is stored for every caller and raised as
        it came."""
        sealed = self._seal()
        if sealed is not None:
            batch, size, number = sealed
            try:
                self.journal.record_outcomes(batch)
            except Exception as exc:
                self._failed(exc)
                raise
            self._finished(size, number)

    def _failed(self, exc: Exception) -> None:
        self._error = exc
        self._signal()
        self._wakeup.set()  # run() raises it too

    def _seal(self) -> tuple[list[Group], int, int] | None:
        """The oldest whole groups, about ``max_batch`` addresses, taken off
        the queue: (groups, addresses, the newest group's number)."""
        self._check()
        batch: list[Group] = []
        size = 0
        for group in self._queue:
            if size >= self.max_batch:
                break
            batch.append(group)
            size += len(group[0])
        if not batch:
            return None
        # Sealed before writing: a submit during a threaded commit starts
        # a new group instead of growing a list that is being written.
        for _ in batch:
            self._queue.popleft()
        self._queued -= size
        self._reopen()
        return batch, size, self._made - len(self._queue)

    def _finished(self, size: int, number: int) -> None:
        self._committed += size
        self._done = number
        self.commits += 1
        self._signal()

    def _reopen(self) -> None:
        """After sealing: only groups still queued may grow, and only their
        addresses constrain where a change may go.  (The outcomes' ids stay
        valid: each group holds its outcome.)"""
        self._open.clear()
        self._last.clear()
        made = self._made - len(self._queue)
        for group, outcome in self._queue:  # a commit took only part of the queue
            made += 1
            self._open[id(outcome)] = (made, group)
            if outcome.status not in FINAL:  # as in _enqueue: nothing follows a final one
                for address in group:
                    self._last[address] = made

    def _signal(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()

    def _check(self) -> None:
        if self._error is not None:
            raise JournalError(f"journal writer failed: {self._error!r}") from self._error
