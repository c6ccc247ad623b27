"""A pool of SMTP sessions to one destination, run in the engine's nursery.

Workers are tasks, one per open connection; each takes a window of queued
recipients, turns them into transactions (batched up to ``max_rcpts`` when the
content is shared), runs them pipelined on its session and hands every result
to :func:`settle`.  Bookkeeping (who takes what, how many workers may run) is
synchronous; only connecting and sending await.  The pool knows the engine
only as a :class:`PoolOwner`.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from ..errors import SMTPAuthError, SMTPError, synthetic_reply
from ..protocol.replies import Reply
from ..routing import Destination
from ..session import Envelope, Refill, SMTPSession, TransactionResult
from ..shaping import PoolLimits
from .connector import Connector
from .domain_queue import DomainQueue, take_transactions, transactions
from .health import DestinationHealth, rate_interval
from .job import Item, Job
from .policy import classify
from .settle import Outcomes, settle

#: what a recipient of a transaction cut short (cancelled, or its job failed) is told
INTERRUPTED = synthetic_reply(451, "4.3.2", "transaction interrupted; not sent")
INTERRUPTED_IN_DOUBT = synthetic_reply(
    451, "4.4.2", "transaction interrupted after end of data; delivery in doubt"
)


class PoolOwner(Outcomes, Protocol):
    """What a pool needs of the engine that runs it."""

    @property
    def nursery(self) -> trio.Nursery: ...

    @property
    def stopping(self) -> bool:
        """No new transaction may start (stop, abort)."""

    def connection_slot(self) -> AbstractAsyncContextManager[None]:
        """Held while a connection is open (the total connection cap)."""

    def connection_waiters(self) -> bool:
        """Another destination waits for a connection slot."""

    def abandon(self, item: Item) -> None:
        """It will not be sent in this run: it ends deferred."""

    def invalid(self, item: Item, reason: str) -> None:
        """It cannot be sent at all (an unrenderable message): it bounces."""

    def abort(self, reason: Reply) -> None:
        """Stop the whole run (an authentication failure)."""

    def pool_idle(self, pool: Pool) -> None:
        """The pool has no work and no worker: it may be dropped."""


class _HookFailed(Exception):
    """A job's in-doubt hook raised (the job records the error itself)."""


class _Batch:
    """The transactions handed to one ``send_batch`` call, until each is settled.

    ``sent`` holds the envelopes (by id; each leaves with its settlement, so
    an id is never reused while listed) whose end of data may have left: if
    the batch is cut short, exactly those recipients are in doubt.  ``job``
    is the one job of all its transactions, or ``None`` once a refill mixed
    in another job's (rare: then each envelope's job is looked up).
    """

    __slots__ = ("job", "pending", "scope", "sent")

    def __init__(self, envelopes: Sequence[Envelope], groups: Sequence[list[Item]]) -> None:
        self.pending: deque[tuple[Envelope, list[Item]]] = deque()
        self.sent: set[int] = set()
        self.scope = trio.CancelScope()
        self.job: Job | None = groups[0][0].job
        self.extend(envelopes, groups)

    def extend(self, envelopes: Sequence[Envelope], groups: Sequence[list[Item]]) -> None:
        job = self.job
        if job is not None and any(group[0].job is not job for group in groups):
            self.job = None
        self.pending.extend(zip(envelopes, groups, strict=True))

    def pop(self) -> list[Item]:
        envelope, group = self.pending.popleft()
        self.sent.discard(id(envelope))
        return group

    def holds(self, job: Job) -> bool:
        if self.job is not None:
            return self.job is job and bool(self.pending)
        return any(group[0].job is job for _, group in self.pending)

    def marks(self, envelopes: Sequence[Envelope]) -> list[tuple[Job, list[str]]]:
        """The addresses of ``envelopes``, by job, for the jobs with an in-doubt hook."""
        job = self.job
        if job is not None:  # the common case: no lookup, one list
            if job.options.on_in_doubt is None:
                return []
            return [(job, [r for envelope in envelopes for r in envelope.recipients])]
        ids = {id(envelope) for envelope in envelopes}
        by_job: dict[Job, list[str]] = {}
        for envelope, group in self.pending:
            owner = group[0].job
            if owner.options.on_in_doubt is not None and id(envelope) in ids:
                by_job.setdefault(owner, []).extend(envelope.recipients)
        return list(by_job.items())


class Pool:
    """Sessions and queued work for one destination."""

    def __init__(
        self,
        owner: PoolOwner,
        destination: Destination,
        limits: PoolLimits,
        health: DestinationHealth,
        connector: Connector,
        *,
        linger: float,
        window: int,
        batch_by: str = "domain",
    ) -> None:
        self.owner = owner
        self.destination = destination
        self.limits = limits
        self.health = health
        self.connector = connector
        self.linger = linger
        #: ``"domain"``: a transaction holds one domain's recipients; ``"site"``:
        #: any of this destination's (RFC 5321 lets one transaction span domains)
        self.batch_by = batch_by
        self.queue: deque[Item] | DomainQueue = (
            DomainQueue(limits.max_rcpts) if batch_by == "domain" else deque()
        )
        self.workers = 0
        self.active_sessions = 0
        self._window = max(1, window)
        self._wakeup = trio.lowlevel.ParkingLot()
        self._next_start = 0.0
        self._interval = rate_interval(limits.rate)
        self._oldest = 0.0
        self._batches: set[_Batch] = set()

    def __repr__(self) -> str:
        idle = self.workers - self.active_sessions
        return (
            f"<Pool {self.destination.key} [{self.active_sessions} active, {idle} idle"
            f" | {len(self.queue)} queued]>"
        )

    # -- feeding ---------------------------------------------------------------

    def add(self, item: Item, *, front: bool = False) -> None:
        if item.job.closed:  # stopped, aborted or cancelled: nobody will send it
            self.owner.abandon(item)
            return
        if not self.queue:
            self._oldest = trio.current_time()
        if front:
            self.queue.appendleft(item)
        else:
            self.queue.append(item)
        if self._wakeup:  # a worker is waiting for work
            self._wakeup.unpark()
        if self.workers < self.limits.connections:  # else nobody more may start
            self._spawn_workers()

    def requeue(self, item: Item) -> None:
        """Back to the front: it goes into the next transaction."""
        self.add(item, front=True)

    def take_queued(self, job: Job | None = None) -> list[Item]:
        """Remove and return the queued items (all, or ``job``'s)."""
        if isinstance(self.queue, DomainQueue):
            return self.queue.take(job)
        if job is None:
            taken = list(self.queue)
            self.queue.clear()
        else:
            taken = [item for item in self.queue if item.job is job]
            self.queue = deque(item for item in self.queue if item.job is not job)
        return taken

    def interrupt(self, job: Job) -> None:
        """Cut short every batch holding ``job``'s recipients, now (cancellation):
        each worker settles its batch as interrupted and drops the connection."""
        for batch in self._batches:
            if batch.holds(job):
                batch.scope.cancel()

    def _spawn_workers(self) -> None:
        wanted = min(self.health.concurrency, self.limits.connections)
        # a session per transaction's worth of queued work, up to the caps
        shared = bool(self.queue) and not self.queue[0].job.one_per_transaction
        per_worker = self.limits.max_rcpts if shared else 1
        backlog = -(-len(self.queue) // per_worker)  # ceil
        if isinstance(self.queue, DomainQueue):  # at least a transaction per domain
            backlog = max(backlog, self.queue.domains)
        wanted = min(wanted, max(1, backlog))
        while self.workers < wanted:
            self.workers += 1
            self.owner.nursery.start_soon(self._worker, name=f"pool {self.destination.key}")

    def wake(self) -> None:
        """Let waiting workers look again (input ended, or the run is stopping)."""
        self._wakeup.unpark_all()

    @property
    def idle(self) -> bool:
        return not self.queue and self.workers == 0

    # -- taking work -----------------------------------------------------------

    def _ready(self) -> bool:
        """A worker may take work now: a full transaction's worth, or nobody else is coming."""
        q = self.queue
        if not q:
            return False
        head = q[0]
        if head.job.one_per_transaction or len(q) >= self.limits.max_rcpts:
            return True
        return head.job.input_done or trio.current_time() - self._oldest >= self.linger

    async def _take(self, budget: int) -> list[Item] | None:
        """Wait for work; ``None`` when idle long enough (or others need the slot)."""
        deadline = trio.current_time() + self.limits.idle_timeout
        while not self._ready():
            if not self.queue and self.owner.connection_waiters():
                return None  # hand the connection slot to a destination with work
            if self.owner.stopping and not self.queue:
                return None
            now = trio.current_time()
            if now >= deadline:
                return None
            wait = deadline - now
            if self.queue:
                wait = min(wait, max(0.0, self._oldest + self.linger - now))
            with trio.move_on_after(wait):
                await self._wakeup.park()
        return self._take_ready(budget)

    def _take_ready(self, budget: int) -> list[Item]:
        """Up to ``budget`` transactions' worth of queued items (the queue is ready)."""
        taken: list[Item] = []
        q = self.queue
        head = q[0]
        job = head.job  # one job per take: its sender, its content, its results
        per_txn = 1 if head.job.one_per_transaction else self.limits.max_rcpts
        limit = per_txn * budget
        if per_txn == 1 and self.workers > 1:
            # a fair share, so the last messages spread over every session
            # instead of queueing behind one (a window's tail is a round trip each)
            limit = min(limit, max(1, -(-len(q) // self.workers)))
        flush = head.job.input_done or trio.current_time() - self._oldest >= self.linger
        if isinstance(q, DomainQueue):
            taken = take_transactions(q, job, per_txn, budget, limit)
        else:
            if not flush:
                # only whole transactions while more recipients may still come
                limit = min(limit, (len(q) // per_txn) * per_txn)
            while q and len(taken) < limit and q[0].job is job:
                taken.append(q.popleft())
        if q:
            self._oldest = trio.current_time()
        return taken

    # -- the worker ------------------------------------------------------------

    async def _worker(self) -> None:
        owner = self.owner
        try:
            while self.queue and not owner.stopping:
                if self.workers > self.health.concurrency:
                    return  # backing off: this destination runs fewer sessions for now
                pause = self.health.pause_until - trio.current_time()
                if pause > 0:
                    await trio.sleep(pause)
                if not self.queue:
                    break
                async with owner.connection_slot():
                    session = await self._connect()
                    if session is None:
                        continue
                    self.active_sessions += 1
                    try:
                        await self._serve(session)
                    finally:
                        self.active_sessions -= 1
                        await session.quit()
        finally:
            self.workers -= 1
            if self.queue and not owner.stopping:
                self._spawn_workers()
            elif self.idle:
                owner.pool_idle(self)

    async def _connect(self) -> SMTPSession | None:
        """A session; on total failure defer a transaction's worth of the queue
        (an authentication failure stops the run instead: see ``Engine.abort``)."""
        try:
            return await self.connector.connect(pipelining=self.health.pipelining)
        except SMTPAuthError as exc:
            # a wrong password is no recipient's fault: bouncing them would be
            # permanent, and every reconnect would refuse the next batch
            self.owner.abort(exc.reply)
            return None
        except SMTPError as exc:
            self.health.failure(trio.current_time())
            # nobody can be delivered right now: defer what the next session would have taken
            n = min(len(self.queue), self.limits.max_rcpts)
            taken = [self.queue.popleft() for _ in range(n)]
            verdict = classify(None, exc.reply)
            for item in taken:
                self.owner.attempted(item, exc.reply, verdict, exc.host)
            return None

    async def _serve(self, session: SMTPSession) -> None:
        limits = self.limits
        owner = self.owner
        host = session.peer_name  # the name, and how the session is secured
        window = 1 if self._interval else self._window
        while session.is_usable and not owner.stopping:
            budget = min(window, limits.messages_per_connection - session.transactions)
            if budget <= 0:
                return
            items = await self._take(budget)
            if not items:
                return
            envelopes, groups = self._envelopes(items)
            if not envelopes:
                continue
            batch = _Batch(envelopes, groups)
            results = await self._send(session, batch, window)
            if results is None:
                return  # cut short: the connection is closed
            for result in results:
                self._settle_next(host, batch, result)
            self._session_ended(session)
            if session.pipelining_broken:
                self.health.pipelining = False
                return

    async def _send(
        self, session: SMTPSession, batch: _Batch, window: int
    ) -> list[TransactionResult] | None:
        """Run ``batch`` on ``session``: the results not yet settled, or ``None``
        when it was cut short (cancelled, or a job's in-doubt hook failed) --
        then every recipient in it has been settled as interrupted and the
        connection, left mid-transaction, is closed without QUIT."""
        limits = self.limits
        host = session.peer_name  # the name, and how the session is secured
        envelopes = [envelope for envelope, _ in batch.pending]
        self._batches.add(batch)
        try:
            with batch.scope:
                if self._interval:
                    await self._pace()
                # a paced destination gets one message per start; otherwise the
                # session may keep pulling work, up to its messages per connection
                refill = None if self._interval else self._refiller(
                    batch, window,
                    limits.messages_per_connection - session.transactions - len(envelopes),
                )
                return await session.send_batch(
                    envelopes,
                    on_data_end=functools.partial(self._data_end, batch),
                    refill=refill,
                    on_done=functools.partial(self._settle_next, host, batch),
                    # no new MAIL once the run stops; unstarted ones come
                    # back attempted=False and end deferred
                    stopping=self._stopping,
                )
        except _HookFailed:
            pass  # the job failed and closed itself; ``Mailer.send`` raises its error
        except BaseException:
            self._interrupted(batch)  # cancelled (or a bug): nobody is lost
            await session.aclose()
            raise
        finally:
            self._batches.discard(batch)
        # here when the hook failed, or interrupt() cancelled batch.scope
        self._interrupted(batch)
        await session.aclose()
        return None

    def _stopping(self) -> bool:
        return self.owner.stopping

    def _refiller(self, batch: _Batch, window: int, budget: int) -> Refill:
        """The session's ``refill``: more queued transactions (a fair share, up to
        a window) while the connection has budget, so every session keeps its
        pipeline full to the end and none waits a round trip between batches."""
        owner = self.owner

        def refill() -> list[Envelope]:
            nonlocal budget
            while budget > 0 and not owner.stopping and self._ready():
                envelopes, more = self._envelopes(self._take_ready(min(window, budget)))
                budget -= max(1, len(envelopes))
                if envelopes:  # (an unrenderable message was settled instead)
                    batch.extend(envelopes, more)
                    return envelopes
            return []

        return refill

    async def _data_end(self, batch: _Batch, envelopes: Sequence[Envelope]) -> None:
        """The session's ``on_data_end``: these ends of data are about to leave,
        once each job's in-doubt hook (the journal's durable mark) has
        returned.  Only then are they noted as possibly sent: a batch cut short
        while a hook runs (or by a hook that raised) sent none of them."""
        for job, addresses in batch.marks(envelopes):
            hook = job.options.on_in_doubt
            assert hook is not None
            try:
                await hook(addresses)
            except SMTPError:
                # the hook's own refusal, with a reply (a journal that cannot
                # be written): the session ends as if the connection were
                # lost, and these ends of data never leave
                raise
            except Exception as exc:
                # a bug or an unexpected failure: the job stops, and
                # ``Mailer.send`` raises it; this end of data must not leave
                job.fail(exc)
                raise _HookFailed from exc
        batch.sent.update(map(id, envelopes))

    async def _pace(self) -> None:
        now = trio.current_time()
        start = max(now, self._next_start)
        self._next_start = start + self._interval
        if start > now:
            await trio.sleep_until(start)

    def _envelopes(self, items: list[Item]) -> tuple[list[Envelope], list[list[Item]]]:
        """Group taken items into transactions; render personalised content now."""
        job = items[0].job
        envelopes: list[Envelope] = []
        groups: list[list[Item]] = []
        if not job.content.personalised:
            shared = job.content.render(items[0].recipient)
            step = 1 if job.one_per_transaction else self.limits.max_rcpts
            for group in transactions(items, step, by_domain=self.batch_by == "domain"):
                envelopes.append(job.envelope([i.recipient.address for i in group], shared))
                groups.append(group)
            return envelopes, groups
        for item in items:
            try:
                message = job.content.render(item.recipient)
            except ValueError as exc:  # TemplateValueError, MessageError: bad for this one
                self.owner.invalid(item, str(exc))
                continue
            envelopes.append(job.envelope([item.recipient.address], message))
            groups.append([item])
        return envelopes, groups

    def _settle_next(self, host: str, batch: _Batch, result: TransactionResult) -> None:
        if settle(self.owner, self.requeue, batch.pop(), result, host):
            self.health.success()

    def _interrupted(self, batch: _Batch) -> None:
        """A batch cut short: whoever's end of data may have left is in doubt;
        the rest was not sent (and goes back to the queue, or ends deferred
        when its job is closed)."""
        owner = self.owner
        while batch.pending:
            maybe_sent = id(batch.pending[0][0]) in batch.sent
            group = batch.pop()
            for item in group:
                if maybe_sent:
                    owner.in_doubt(item, INTERRUPTED_IN_DOUBT, None)
                else:
                    owner.unattempted(item, INTERRUPTED, self.requeue)

    def _session_ended(self, session: SMTPSession) -> None:
        error = session.error
        if error is not None and (session.transactions == 0 or error.code == 421):
            self.health.failure(trio.current_time())
