"""A pool of SMTP sessions to one destination, run in the engine's nursery.

Workers are tasks, one per open connection; each takes a window of queued
recipients, turns them into transactions (batched up to ``max_rcpts`` when the
content is shared), runs them pipelined on its session and hands every reply
to the engine.  Bookkeeping (who takes what, how many workers may run) is
synchronous; only connecting and sending await.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from .errors import SMTPAuthError, SMTPError, SMTPTLSError
from .policy import rate_interval
from .routing import Destination, Host
from .session import Envelope, Refill, SMTPSession, TransactionResult
from .shaping import PoolLimits

if TYPE_CHECKING:
    from .engine import Engine, Item


class Pool:
    """Sessions and queued work for one destination."""

    def __init__(self, engine: Engine, destination: Destination, limits: PoolLimits) -> None:
        self.engine = engine
        self.destination = destination
        self.limits = limits
        self.queue: deque[Item] = deque()
        self.workers = 0
        self.active_sessions = 0
        # backoff and quirks outlive the pool: a destination that comes back
        # after going idle must not start from full speed again
        self.health = engine.health_of(destination.key, limits.connections)
        self._wakeup = trio.lowlevel.ParkingLot()
        self._next_start = 0.0
        self._sources = itertools.cycle(limits.source_addresses or (None,))
        self._interval = rate_interval(limits.rate)
        self._oldest = 0.0

    def __repr__(self) -> str:
        idle = self.workers - self.active_sessions
        return (
            f"<Pool {self.destination.key} [{self.active_sessions} active, {idle} idle"
            f" | {len(self.queue)} queued]>"
        )

    # -- feeding ---------------------------------------------------------------

    def add(self, item: Item, *, front: bool = False) -> None:
        if self.engine.stopping:  # no worker will take it any more
            self.engine.abandon(item)
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

    def _spawn_workers(self) -> None:
        wanted = min(self.health.concurrency, self.limits.connections)
        # a session per transaction's worth of queued work, up to the caps
        shared = bool(self.queue) and not self.queue[0].job.one_per_transaction
        per_worker = self.limits.max_rcpts if shared else 1
        backlog = -(-len(self.queue) // per_worker)  # ceil
        wanted = min(wanted, max(1, backlog))
        while self.workers < wanted:
            self.workers += 1
            self.engine.nursery.start_soon(self._worker, name=f"pool {self.destination.key}")

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
        return head.job.input_done or trio.current_time() - self._oldest >= self.engine.linger

    async def _take(self, budget: int) -> list[Item] | None:
        """Wait for work; ``None`` when idle long enough (or others need the slot)."""
        deadline = trio.current_time() + self.limits.idle_timeout
        while not self._ready():
            if not self.queue and self.engine.connection_waiters():
                return None  # hand the connection slot to a destination with work
            if self.engine.stopping and not self.queue:
                return None
            now = trio.current_time()
            if now >= deadline:
                return None
            wait = deadline - now
            if self.queue:
                wait = min(wait, max(0.0, self._oldest + self.engine.linger - now))
            with trio.move_on_after(wait):
                await self._wakeup.park()
        return self._take_ready(budget)

    def _take_ready(self, budget: int) -> list[Item]:
        """Up to ``budget`` transactions' worth of queued items (the queue is ready)."""
        taken: list[Item] = []
        q = self.queue
        head = q[0]
        content = head.job.content
        per_txn = 1 if head.job.one_per_transaction else self.limits.max_rcpts
        limit = per_txn * budget
        if per_txn == 1 and self.workers > 1:
            # a fair share, so the last messages spread over every session
            # instead of queueing behind one (a window's tail is a round trip each)
            limit = min(limit, max(1, -(-len(q) // self.workers)))
        flush = head.job.input_done or trio.current_time() - self._oldest >= self.engine.linger
        if not flush:
            # only whole transactions while more recipients may still come
            limit = min(limit, (len(q) // per_txn) * per_txn)
        while q and len(taken) < limit and q[0].job.content is content:
            taken.append(q.popleft())
        if q:
            self._oldest = trio.current_time()
        return taken

    # -- the worker ------------------------------------------------------------

    async def _worker(self) -> None:
        engine = self.engine
        try:
            while self.queue and not engine.stopping:
                if self.workers > self.health.concurrency:
                    return  # backing off: this destination runs fewer sessions for now
                pause = self.health.pause_until - trio.current_time()
                if pause > 0:
                    await trio.sleep(pause)
                if not self.queue:
                    break
                async with engine.connection_slot():
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
            if self.queue and not engine.stopping:
                self._spawn_workers()
            elif self.idle:
                engine.pool_idle(self)

    async def _connect(self) -> SMTPSession | None:
        """Try the destination's hosts in order; on total failure defer a batch."""
        engine = self.engine
        last: SMTPError | None = None
        source = next(self._sources)
        for host in self._host_order():
            config = replace(
                engine.config.session,
                host=host.name,
                port=host.port,
                source_address=source,
                use_pipelining=self.health.pipelining,
                timeouts=self.limits.session_timeouts(engine.config.session.timeouts),
            )
            for address in host.addresses or (host.name,):
                try:
                    return await SMTPSession.connect(config, address)
                except SMTPTLSError as exc:
                    last = exc
                    if config.secure != "may":
                        break  # required TLS fails closed
                    # opportunistic TLS that breaks: like Postfix's "may", this
                    # server gets the message in plaintext rather than never
                    try:
                        return await SMTPSession.connect(replace(config, secure="none"), address)
                    except SMTPError as retry_exc:
                        last = retry_exc
                except SMTPAuthError as exc:
                    last = exc
                    break
                except SMTPError as exc:
                    last = exc
        assert last is not None
        self.health.failure(trio.current_time())
        # nobody can be delivered right now: defer what the next session would have taken
        taken = [self.queue.popleft() for _ in range(min(len(self.queue), self.limits.max_rcpts))]
        for item in taken:
            engine.attempted(item, last.reply, host=last.host)
        return None

    def _host_order(self) -> list[Host]:
        """Hosts by preference, shuffled within equal preference on every connection,
        so one pool's sessions spread over a provider's equal MX hosts."""
        hosts = list(self.destination.hosts)
        if len(hosts) < 2:
            return hosts
        rng = self.engine.rng
        return sorted(hosts, key=lambda h: (h.preference, rng.random()))

    async def _serve(self, session: SMTPSession) -> None:
        limits = self.limits
        host = session.config.host
        window = 1 if self._interval else max(1, self.engine.config.session.chunking_window)
        while session.is_usable and not self.engine.stopping:
            budget = min(window, limits.messages_per_connection - session.transactions)
            if budget <= 0:
                return
            items = await self._take(budget)
            if not items:
                return
            envelopes, groups = self._envelopes(items)
            if not envelopes:
                continue
            if self._interval:
                await self._pace()
            # a paced destination gets one message per start; otherwise the
            # session may keep pulling work, up to its messages per connection
            pending = deque(groups)
            refill = None if self._interval else self._refiller(
                pending, window, limits.messages_per_connection - session.transactions
                - len(envelopes)
            )
            results = await session.send_batch(
                envelopes,
                on_data_end=self.engine.on_data_end,
                refill=refill,
                on_done=functools.partial(self._settle_next, host, pending),
            )
            self._settle(session, pending, results)
            if session.pipelining_broken:
                self.health.pipelining = False
                return

    def _refiller(self, groups: deque[list[Item]], window: int, budget: int) -> Refill:
        """The session's ``refill``: more queued transactions (a fair share, up to
        a window) while the connection has budget, so every session keeps its
        pipeline full to the end and none waits a round trip between batches."""

        def refill() -> list[Envelope]:
            nonlocal budget
            while budget > 0 and not self.engine.stopping and self._ready():
                envelopes, more = self._envelopes(self._take_ready(min(window, budget)))
                budget -= max(1, len(envelopes))
                if envelopes:  # (an unrenderable message was settled instead)
                    groups.extend(more)
                    return envelopes
            return []

        return refill

    async def _pace(self) -> None:
        now = trio.current_time()
        start = max(now, self._next_start)
        self._next_start = start + self._interval
        if start > now:
            await trio.sleep_until(start)

    def _envelopes(self, items: list[Item]) -> tuple[list[Envelope], list[list[Item]]]:
        """Group taken items into transactions; render personalised content now."""
        engine = self.engine
        job = items[0].job
        envelopes: list[Envelope] = []
        groups: list[list[Item]] = []
        if not job.content.personalised:
            shared = job.content.render(items[0].recipient)
            step = 1 if job.one_per_transaction else self.limits.max_rcpts
            for start in range(0, len(items), step):
                group = items[start : start + step]
                envelopes.append(job.envelope([i.recipient.address for i in group], shared))
                groups.append(group)
            return envelopes, groups
        for item in items:
            try:
                message = job.content.render(item.recipient)
            except ValueError as exc:  # TemplateValueError, MessageError: bad for this one
                engine.invalid(item, str(exc))
                continue
            envelopes.append(job.envelope([item.recipient.address], message))
            groups.append([item])
        return envelopes, groups

    def _settle_next(
        self, host: str, pending: deque[list[Item]], result: TransactionResult
    ) -> None:
        self._settle_one(host, pending.popleft(), result)

    def _settle_one(self, host: str, group: list[Item], result: TransactionResult) -> None:
        """One transaction's replies to the engine (its recipients' policy)."""
        engine = self.engine
        if not result.attempted:
            for item in reversed(group):
                engine.unattempted(item, result.replies[0], self)
            return
        replies = result.replies
        first = replies[0]
        in_doubt = result.in_doubt
        if first.code < 300 and not in_doubt and all(r is first for r in replies):
            # the common case: one end-of-data reply accepts the whole transaction
            engine.delivered(group, first, host)
            self.health.success()
            return
        accepted = any(r.code < 300 for r in replies)
        for index, (item, reply) in enumerate(zip(group, replies, strict=True)):
            engine.attempted(
                item,
                reply,
                host=host,
                in_doubt=index in in_doubt,
                others_accepted=accepted,
                pool=self,
            )
        if accepted:
            self.health.success()

    def _settle(
        self,
        session: SMTPSession,
        groups: Sequence[list[Item]],
        results: Sequence[TransactionResult],
    ) -> None:
        host = session.config.host
        for group, result in zip(groups, results, strict=True):
            self._settle_one(host, group, result)
        error = session.error
        if error is not None and (session.transactions == 0 or error.code == 421):
            self.health.failure(trio.current_time())
