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
from ..observe import NOT_MEASURED, RunMetrics
from ..protocol.replies import Reply
from ..reactions import ReactionRule
from ..routing import Destination
from ..session import Envelope, Refill, SMTPSession, TransactionResult
from ..shaping import PoolLimits
from ..warmup import Grant, WarmupGate
from .batch import Batch
from .connector import ROUND_ROBIN, Connector, SourceChoice
from .domain_queue import DomainQueue, take_transactions, transactions
from .gate import PoolGate, Wait
from .health import DestinationHealth, rate_interval
from .job import Item, Job
from .limiter import DestinationLimiter, SharedDestination
from .policy import classify
from .settle import Outcomes, settle

#: what a recipient of a transaction cut short (cancelled, or its job failed) is told
INTERRUPTED = synthetic_reply(451, "4.3.2", "transaction interrupted; not sent")
INTERRUPTED_IN_DOUBT = synthetic_reply(
    451, "4.4.2", "transaction interrupted after end of data; delivery in doubt"
)


#: longest a session idles on a seat shared with other processes (a limiter's)
SHARED_IDLE = 0.5


class PoolOwner(Outcomes, Protocol):
    """What a pool needs of the engine that runs it."""

    @property
    def nursery(self) -> trio.Nursery: ...

    @property
    def stopping(self) -> bool:
        """No new transaction may start (stop, abort)."""

    def connection_slot(self) -> AbstractAsyncContextManager[None]:
        """Held while a connection is open (the total connection cap)."""

    def write_ahead(self, limit: int, per_transaction: float) -> int:
        """Transactions one session may have in flight (BDAT): see ``Engine.write_ahead``."""
        ...

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

    def react(
        self, pool: Pool, rule: ReactionRule, reply: Reply, source: str | None, job: Job | None
    ) -> None:
        """A reply rule matched ``reply`` (from ``source``, in ``job``): act, and log it."""

    def hold(self, item: Item, delay: float, reply: Reply) -> None:
        """It cannot go for ``delay`` seconds (suspended, warm-up cap): it waits,
        no attempt spent, or ends deferred with ``reply`` if its job cannot wait."""

    def connection_failed(self, destination: Destination, reply: Reply, host: str | None,
                          pause_until: float) -> None:
        """No host of ``destination`` could be reached (once per attempt, not per recipient)."""

    @property
    def destination_limiter(self) -> DestinationLimiter | None:
        """Limits shared with other processes (``None``: this process alone)."""


class _HookFailed(Exception):
    """A job's in-doubt hook raised (the job records the error itself)."""


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
        reactions: tuple[ReactionRule, ...] = (),
        warmup: WarmupGate | None = None,
        metrics: RunMetrics | None = None,
        batch_by: str = "site",
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
        self._batches: set[Batch] = set()
        #: reply rules and warm-up caps (None without any: nothing to check)
        self.gate = PoolGate(
            health, limits.connections, limits.source_addresses, reactions, warmup
        ) if reactions or warmup is not None else None
        #: this destination's metrics hooks (no-ops when nothing is measured)
        self._site = metrics.site(destination.key) if metrics is not None else NOT_MEASURED
        # -- limits shared with other processes (delivery/limiter.py); None here
        # costs nothing: every use below is behind one ``is not None``
        limiter = owner.destination_limiter
        self.shared = None if limiter is None else SharedDestination(limiter, destination.key)

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
        health = self.health
        wanted = min(health.concurrency, self.limits.connections)
        if health.limited is not None:  # a reply rule lowered the cap for a while
            wanted = health.connection_cap(wanted, trio.current_time())
        # a session per transaction's worth of queued work, up to the caps
        shared = bool(self.queue) and not self.queue[0].job.one_per_transaction
        per_worker = self.limits.max_rcpts if shared else 1
        backlog = -(-len(self.queue) // per_worker)  # ceil
        if isinstance(self.queue, DomainQueue):  # at least a transaction per domain
            backlog = max(backlog, self.queue.domains)
        wanted = min(wanted, max(1, backlog))
        if self.shared is not None and self.shared.seats_short:  # one task waits for a seat
            wanted = min(wanted, self.active_sessions + 1)
        while self.workers < wanted:
            self.workers += 1
            self.owner.nursery.start_soon(self._worker, name=f"pool {self.destination.key}")

    def wake(self) -> None:
        """Let waiting workers look again (input ended, or the run is stopping)."""
        self._wakeup.unpark_all()

    @property
    def idle(self) -> bool:
        return not self.queue and self.workers == 0

    @property
    def in_flight(self) -> int:
        """Recipients taken by a session and not settled yet (read by a scrape)."""
        return sum(len(group) for batch in self._batches for _, group in batch.pending)

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
        idle = self.limits.idle_timeout
        if self.shared is not None:  # its seat is shared: idling on it starves other workers
            if self.shared.surplus():
                return None  # other processes want this destination's seats: give one back
            idle = min(idle, SHARED_IDLE)
        deadline = trio.current_time() + idle
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
                now = trio.current_time()
                if self.workers > self.health.connection_cap(self.limits.connections, now):
                    return  # backing off: this destination runs fewer sessions for now
                pause = self.health.pause_until - now
                if pause > 0:
                    self._site.throttled(pause)
                    await trio.sleep(pause)
                if not self.queue:
                    break
                gate = self.gate
                source = gate.source(trio.current_time()) if gate is not None else ROUND_ROBIN
                if isinstance(source, Wait):  # suspended or capped: the queue waits
                    self._hold_queue(source)
                    break
                shared, seat = self.shared, None
                if shared is not None:
                    seat = await shared.seat(
                        self.limits.connections, self._wants_seat,
                        lambda: self.workers - self.active_sessions > 1)
                    if seat is None:
                        return  # no work left, or another task already waits for a seat
                try:
                    async with owner.connection_slot():
                        session = await self._connect(source)
                        if session is None:
                            continue
                        self.active_sessions += 1
                        if shared is not None and shared.seats_short:
                            self._spawn_workers()  # the next one waits for the next seat
                        try:
                            await self._serve(session)
                        finally:
                            self.active_sessions -= 1
                            await session.quit()
                finally:
                    if shared is not None and seat is not None:
                        await shared.release(seat)
        finally:
            self.workers -= 1
            if self.queue and not owner.stopping:
                self._spawn_workers()
            elif self.idle:
                owner.pool_idle(self)

    def _wants_seat(self) -> bool:
        return bool(self.queue) and not self.owner.stopping

    def _hold_queue(self, wait: Wait) -> None:
        for item in self.take_queued():
            self.owner.hold(item, wait.delay, wait.reply)

    def _granted(
        self, gate: PoolGate, items: list[Item], source: str | None
    ) -> tuple[list[Item], Grant | None]:
        """The part of ``items`` the warm-up cap lets ``source`` send now (and
        its count, to give back what is not sent); the rest goes back to the
        queue's front."""
        granted, grant = gate.grant(len(items), source)
        if granted < len(items):
            for item in reversed(items[granted:]):
                self.queue.appendleft(item)
            items = items[:granted]
        return items, grant

    async def _connect(self, source: str | SourceChoice | None) -> SMTPSession | None:
        """A session; on total failure defer a transaction's worth of the queue
        (an authentication failure stops the run instead: see ``Engine.abort``)."""
        site = self._site
        try:
            session = await self.connector.connect(
                pipelining=self.health.pipelining, source=source
            )
        except SMTPAuthError as exc:
            site.connect(exc)
            # a wrong password is no recipient's fault: bouncing them would be
            # permanent, and every reconnect would refuse the next batch
            self.owner.abort(exc.reply)
            return None
        except SMTPError as exc:
            site.connect(exc)
            self.health.failure(trio.current_time())
            if self.shared is not None:
                await self.shared.pause(self.health.pause, exc.reply)
            self.owner.connection_failed(
                self.destination, exc.reply, exc.host, self.health.pause_until)
            # nobody can be delivered right now: defer what the next session would have taken
            n = min(len(self.queue), self.limits.max_rcpts)
            taken = [self.queue.popleft() for _ in range(n)]
            verdict = classify(None, exc.reply)
            for item in taken:
                self.owner.attempted(item, exc.reply, verdict, exc.host)
            if self.gate is not None:
                chosen = None if isinstance(source, SourceChoice) else source
                self._react_to(self.gate, (exc.reply,), chosen, taken[0].job if taken else None)
            return None
        site.connect(None)
        return session

    async def _serve(self, session: SMTPSession) -> None:
        limits = self.limits
        owner = self.owner
        host = session.peer_name  # the name, and how the session is secured
        source = session.config.source_address
        health = self.health
        gate = self.gate
        while session.is_usable and not owner.stopping:
            now = trio.current_time()
            if gate is not None and not gate.may_go_on(source, self.active_sessions, now):
                return
            interval = health.interval(self._interval, now)
            window = 1 if interval else self._window
            budget = min(window, limits.messages_per_connection - session.transactions)
            if budget <= 0:
                return
            items = await self._take(budget)
            if not items:
                return
            grant = None
            if gate is not None:
                await gate.prepare(len(items), source)  # shared warm-up counters (workers)
                items, grant = self._granted(gate, items, source)
                if not items:
                    return  # the cap is reached: the worker holds the queue next
            envelopes, groups = self._envelopes(items)
            if not envelopes:
                continue
            batch = Batch(envelopes, groups, source, grant)
            results = await self._send(session, batch, window, interval)
            if results is None:
                return  # cut short: the connection is closed
            for result in results:
                self._settle_next(host, batch, result)
            if self._session_ended(session, batch) and self.shared is not None:
                error = session.error
                await self.shared.pause(self.health.pause, None if error is None else error.reply)
            if session.pipelining_broken:
                self.health.pipelining = False
                return

    async def _send(
        self, session: SMTPSession, batch: Batch, window: int, interval: float
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
                if interval:
                    if self.shared is not None and self.limits.rate is not None:
                        # the shaping file's rate holds in sum; a reply rule's
                        # slower pacing (``interval``) stays this process's
                        await self.shared.take(self.limits.rate, len(envelopes), len(self.queue))
                    await self._pace(interval)
                # a paced destination gets one message per start; otherwise the
                # session may keep pulling work, up to its messages per connection
                refill = None if interval else self._refiller(
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
                    write_ahead=functools.partial(
                        self.owner.write_ahead, session.config.chunking_window,
                        sum(len(e.recipients) for e in envelopes) / max(1, len(envelopes)),
                    ),
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

    def _refiller(self, batch: Batch, window: int, budget: int) -> Refill:
        """The session's ``refill``: more queued transactions (a fair share, up to
        a window) while the connection has budget, so every session keeps its
        pipeline full to the end and none waits a round trip between batches."""
        owner = self.owner

        def refill() -> list[Envelope]:
            nonlocal budget
            while budget > 0 and not owner.stopping and self._ready():
                if self.shared is not None and self.shared.surplus():
                    return []  # this session gives its seat back (see _take)
                gate = self.gate
                if gate is not None and not gate.may_go_on(
                    batch.source, self.active_sessions, trio.current_time()
                ):
                    return []  # a reply rule acted: this session takes nothing more
                items = self._take_ready(min(window, budget))
                if gate is not None:
                    items, batch.grant = self._granted(gate, items, batch.source)
                    if not items:
                        return []
                envelopes, more = self._envelopes(items)
                budget -= max(1, len(envelopes))
                if envelopes:  # (an unrenderable message was settled instead)
                    batch.extend(envelopes, more)
                    return envelopes
            return []

        return refill

    async def _data_end(self, batch: Batch, envelopes: Sequence[Envelope]) -> None:
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

    async def _pace(self, interval: float) -> None:
        now = trio.current_time()
        start = max(now, self._next_start)
        self._next_start = start + interval
        if start > now:
            self._site.throttled(start - now)
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

    def _settle_next(self, host: str, batch: Batch, result: TransactionResult) -> None:
        self._site.transaction(result)
        group = batch.pop()
        if settle(self.owner, self.requeue, group, result, host):
            self.health.success()
        gate = self.gate
        if gate is not None:  # (no rules, no caps: no reply is ever looked at)
            self._react_to(gate, result.replies, batch.source, group[0].job)
            if not result.attempted:
                gate.unsent(batch.grant, len(group))

    def _react_to(
        self, gate: PoolGate, replies: Sequence[Reply], source: str | None, job: Job | None
    ) -> None:
        for rule, reply in gate.matches(replies):
            self.owner.react(self, rule, reply, source, job)

    def _interrupted(self, batch: Batch) -> None:
        """A batch cut short: whoever's end of data may have left is in doubt;
        the rest was not sent (and goes back to the queue, or ends deferred
        when its job is closed)."""
        owner = self.owner
        while batch.pending:
            maybe_sent = id(batch.pending[0][0]) in batch.sent
            group = batch.pop()
            if not maybe_sent and self.gate is not None:
                self.gate.unsent(batch.grant, len(group))
            for item in group:
                if maybe_sent:
                    owner.in_doubt(item, INTERRUPTED_IN_DOUBT, None)
                else:
                    owner.unattempted(item, INTERRUPTED, self.requeue)

    def _session_ended(self, session: SMTPSession, batch: Batch) -> bool:
        """Whether the session ended in a failure the destination backs off for."""
        error = session.error
        failed = error is not None and (session.transactions == 0 or error.code == 421)
        if failed:
            self.health.failure(trio.current_time())
        if error is not None and self.gate is not None:
            self._react_to(self.gate, (error.reply,), batch.source, batch.job)
        return failed
