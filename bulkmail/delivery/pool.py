"""A pool of SMTP sessions to one destination, run in the engine's nursery.

Workers are tasks, one per open connection; each takes a window of queued
recipients, turns them into transactions (batched up to ``max_rcpts`` when the
content is shared), runs them pipelined on its session and hands every result
to :func:`settle` -- that per-transaction part is :class:`BatchRunner`
(``batch_run.py``), a base class of :class:`Pool`.  Bookkeeping (who takes
what, how many workers may run) is synchronous; only connecting and sending
await.  The pool knows the engine only as a :class:`PoolOwner`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from ..errors import SMTPAuthError, SMTPError
from ..observe import NOT_MEASURED, RunMetrics
from ..protocol.replies import Reply
from ..reactions import ReactionRule
from ..routing import Destination
from ..session import SMTPSession
from ..shaping import PoolLimits
from ..warmup import Grant, WarmupGate
from .batch import Batch
from .batch_run import BatchOwner, BatchRunner
from .connector import ROUND_ROBIN, Connector, SourceChoice
from .domain_queue import DomainQueue, take_transactions
from .gate import PoolGate, Wait
from .health import DestinationHealth, rate_interval
from .job import Item, Job
from .limiter import DestinationLimiter, SharedDestination
from .policy import classify

#: longest a session idles on a seat shared with other processes (a limiter's)
SHARED_IDLE = 0.5
#: a site's pool lingers this many times longer while routes are coming in (``_linger``)
ROUTING_LINGER = 4


class PoolOwner(BatchOwner, Protocol):
    """What a pool needs of the engine that runs it."""

    @property
    def nursery(self) -> trio.Nursery: ...

    def connection_slot(self) -> AbstractAsyncContextManager[None]:
        """Held while a connection is open (the total connection cap)."""

    def connection_waiters(self) -> bool:
        """Another destination waits for a connection slot."""

    def routing(self) -> bool:
        """Recipients wait for their domain's route: any pool may still get more."""

    def abandon(self, item: Item) -> None:
        """It will not be sent in this run: it ends deferred."""

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


class Pool(BatchRunner):
    """Sessions and queued work for one destination (running a batch on a
    session: :class:`BatchRunner`)."""

    owner: PoolOwner

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
        #: workers parked in ``_wakeup`` and not yet unparked (an int, not the
        #: lot's Python-level ``__bool__``: ``add`` asks once per recipient)
        self._parked = 0
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
        if self._parked and self._worth_a_look(item, front):  # (busy workers: no call)
            self._unpark_one()
        if self.workers < self.limits.connections:  # else nobody more may start
            self._spawn_workers()

    def _worth_a_look(self, item: Item, front: bool) -> bool:
        """Whether the item just added may change a waiting worker's mind: the
        queue was empty (its linger starts now), or holds one more whole
        transaction.  Anything else it would see as not ready and park again,
        with the same deadline (the oldest item's): a wake-up per recipient
        cost a cancel scope and a park each, 17% of the client's samples with
        100,000 one-recipient domains arriving one answer at a time."""
        n = len(self.queue)
        return (
            front or n == 1 or n % self.limits.max_rcpts == 0
            or item.job.one_per_transaction
        )

    def _unpark_one(self) -> None:
        """Wake one worker waiting for work, if any."""
        if self._parked and self._wakeup.unpark():
            self._parked -= 1

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
        self._parked -= len(self._wakeup.unpark_all())

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
        return self._flush_due(head.job)

    def _flush_due(self, job: Job) -> bool:
        """What is queued may go short of a full transaction: nothing more can
        come, or the oldest has lingered.  (``now >= oldest + linger``, the
        very sum ``_take`` sleeps until: with ``now - oldest >= linger``, float
        rounding could leave a due queue not ready and a zero wait -- a loop
        that never yields to a virtual clock.)"""
        return self._all_in(job) or trio.current_time() >= self._oldest + self._linger()

    def _linger(self) -> float:
        """How long the oldest queued recipient waits for a fuller transaction.

        A site's pool (``--batch-by site``) waits longer while routes are
        still coming in: each answer brings recipients of another domain
        at this site, so 100,000 one-recipient domains at 20 providers fill
        its transactions at the resolver's pace -- ~25 per 50 ms.  With the
        plain linger they made 3,700-6,700 transactions of ~20 (scenario f's
        sweep); with 4x it while routing, ~2,100 of ~48, and the sinks and
        the client spend ~1 s less.  A domain's pool gains nothing by waiting:
        a domain's recipients arrive together once it resolves."""
        if self.batch_by != "domain" and self.owner.routing():
            return self.linger * ROUTING_LINGER
        return self.linger

    def _all_in(self, job: Job) -> bool:
        """Nothing more of ``job`` can join this queue (retries aside): its input
        is read and no recipient waits for a route, so what is queued goes now,
        not after the linger.  Input read is not enough: a list of 100,000
        domains is read long before the last domains resolve, and flushing on
        every answer cut 100,000 recipients into 18,700 transactions where
        linger-filled ones need ~3,000 (``--batch-by site``, 20 MX hosts)."""
        return job.input_done and not self.owner.routing()

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
                if self.queue:
                    self._unpark_one()  # it was woken for this work: another looks
                return None
            wait = deadline - now
            if self.queue:
                wait = min(wait, max(0.0, self._oldest + self._linger() - now))
            self._parked += 1
            woken = False  # unparked: whoever unparked it took it off the count
            try:
                with trio.move_on_after(wait):
                    await self._wakeup.park()
                    woken = True
            finally:
                if not woken:  # timed out or cancelled: the lot dropped it itself
                    self._parked -= 1
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
            limit = min(limit, self._fair_share())
        flush = self._flush_due(job)
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

    def _react_to(
        self, gate: PoolGate, replies: Sequence[Reply], source: str | None, job: Job | None
    ) -> None:
        for rule, reply in gate.matches(replies):
            self.owner.react(self, rule, reply, source, job)
