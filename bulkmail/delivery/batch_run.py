"""Running one batch of transactions on a session: the pool's per-transaction path.

:class:`BatchRunner` is a base class of :class:`~bulkmail.delivery.pool.Pool`
(a mixin, so no call layer is added per transaction): it turns taken items
into envelopes, paces and sends them pipelined, refills the session's window,
awaits the in-doubt hook before each end of data, and settles every result --
or, when a batch is cut short, settles each recipient as interrupted.  The
pool keeps its queue, workers, seats and connecting; the attributes and
methods declared below are the pool's.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from ..errors import SMTPError, synthetic_reply
from ..observe import SiteMetrics
from ..protocol.replies import Reply
from ..session import Envelope, Refill, SMTPSession, TransactionResult
from ..shaping import PoolLimits
from ..warmup import Grant
from .batch import Batch
from .domain_queue import DomainQueue, transactions
from .gate import PoolGate
from .health import DestinationHealth
from .job import Item, Job
from .limiter import SharedDestination
from .settle import Outcomes, settle

#: what a recipient of a transaction cut short (cancelled, or its job failed) is told
INTERRUPTED = synthetic_reply(451, "4.3.2", "transaction interrupted; not sent")
INTERRUPTED_IN_DOUBT = synthetic_reply(
    451, "4.4.2", "transaction interrupted after end of data; delivery in doubt"
)


class BatchOwner(Outcomes, Protocol):
    """What running a batch needs of the engine (a part of ``PoolOwner``)."""

    @property
    def stopping(self) -> bool:
        """No new transaction may start (stop, abort)."""

    def invalid(self, item: Item, reason: str) -> None:
        """It cannot be sent at all (an unrenderable message): it bounces."""

    def write_ahead(self, limit: int, per_transaction: float) -> int:
        """Transactions one session may have in flight (BDAT): see ``Engine.write_ahead``."""


class _HookFailed(Exception):
    """A job's in-doubt hook raised (the job records the error itself)."""


class BatchRunner:
    """The pool's batches: sending them on a session and settling their results."""

    owner: BatchOwner
    limits: PoolLimits
    health: DestinationHealth
    batch_by: str
    queue: deque[Item] | DomainQueue
    active_sessions: int
    workers: int  #: the pool's worker tasks (sessions, and one waiting for a seat)
    gate: PoolGate | None
    shared: SharedDestination | None
    _site: SiteMetrics
    _batches: set[Batch]
    #: when the next paced message may start (``_pace``)
    _next_start: float

    if TYPE_CHECKING:  # the pool's own (taking work, reply rules)
        def requeue(self, item: Item) -> None: ...
        def _ready(self) -> bool: ...
        def _flush_due(self, job: Job) -> bool: ...
        def _take_ready(self, budget: int) -> list[Item]: ...
        def _granted(
            self, gate: PoolGate, items: list[Item], source: str | None
        ) -> tuple[list[Item], Grant | None]: ...
        def _react_to(
            self, gate: PoolGate, replies: Sequence[Reply], source: str | None, job: Job | None
        ) -> None: ...

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
                    batch, session, window,
                    limits.messages_per_connection - session.transactions - len(envelopes),
                )
                return await session.send_batch(
                    envelopes,
                    on_data_end=functools.partial(self._data_end, batch),
                    refill=refill,
                    on_done=functools.partial(self._settle_next, host, batch),
                    # no new MAIL once the run stops; unstarted ones come
                    # back attempted=False and end deferred
                    # getattr through partial: no Python frame for a check the
                    # session makes at every step (5 calls a message in scenario a)
                    stopping=functools.partial(getattr, self.owner, "stopping"),
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

    def _refiller(self, batch: Batch, session: SMTPSession, window: int, budget: int) -> Refill:
        """The session's ``refill``: more queued transactions (a fair share, up to
        a window) while the connection has budget, so every session keeps its
        pipeline full to the end and none waits a round trip between batches.

        A BDAT session asks once half its window (``session.window``, just
        set from the in-doubt budget) is answered, and takes only when a
        write's worth is queued (that half), or nothing more is coming
        soon (``_flush_due``): else it lets its batch end and comes back
        through ``_take``.  Taking whatever one transaction had come meanwhile
        made writes of ~2 transactions where the windows of the old driver
        wrote ~9 (scenario d: 1,100 writes and 2,200 reads for 2,000
        transactions where it made 129 and 269), each write its own in-doubt
        commit, send, read and settling round."""
        owner = self.owner

        def refill() -> list[Envelope]:
            nonlocal budget
            half = session.window // 2
            # up to one transaction (any mode but BDAT, or a short window), the
            # test is the loop's own _ready(): _worth_a_write(1) holds whenever it does
            if half > 1 and not self._worth_a_write(half):
                return []
            # a take is one job's; a window may take several (a store
            # worker's claims are jobs of one destination each: a long tail
            # of one-recipient claims wrote one transaction per round trip)
            taken: list[Envelope] = []
            want = min(window, budget)
            q = self.queue
            if self.workers > 1 and q and q[0].job.one_per_transaction:
                want = min(want, self._fair_share())  # as a take's: many jobs' too
            while budget > 0 and len(taken) < want and not owner.stopping and self._ready():
                if self.shared is not None and self.shared.surplus():
                    break  # this session gives its seat back (see _take)
                gate = self.gate
                if gate is not None and (taken or not gate.may_go_on(
                    batch.source, self.active_sessions, trio.current_time()
                )):
                    break  # one take under a gate (its grant); or a reply rule acted
                items = self._take_ready(min(want - len(taken), budget))
                if gate is not None:
                    items, batch.grant = self._granted(gate, items, batch.source)
                    if not items:
                        break
                envelopes, more = self._envelopes(items)
                budget -= max(1, len(envelopes))
                if envelopes:  # (an unrenderable message was settled instead)
                    batch.extend(envelopes, more)
                    taken += envelopes
                    q = self.queue
                    if q and q[0].job is items[0].job:
                        break  # the rest of this job is other sessions' fair share
            return taken

        return refill

    def _fair_share(self) -> int:
        """A session's share of a queue of one-message transactions, so the
        last messages spread over every session instead of queueing behind
        one (a window's tail is a round trip each)."""
        return max(1, -(-len(self.queue) // self.workers))

    def _worth_a_write(self, transactions: int) -> bool:
        """``transactions`` whole transactions are queued (or domains' worth:
        by domain, each domain is one), or the queue may go short now."""
        q = self.queue
        if not q:
            return False
        head = q[0]
        per_txn = 1 if head.job.one_per_transaction else self.limits.max_rcpts
        if len(q) >= per_txn * transactions:
            return True
        if isinstance(q, DomainQueue) and q.domains >= transactions:
            return True
        return self._flush_due(head.job)

    async def _data_end(self, batch: Batch, envelopes: Sequence[Envelope]) -> None:
        """The session's ``on_data_end``: these ends of data are about to leave,
        once each job's in-doubt hook (the journal's durable mark) has
        returned.  Only then are they noted as possibly sent: a batch cut short
        while a hook runs (or by a hook that raised) sent none of them."""
        marks = batch.marks(envelopes)
        if len(marks) > 1:
            await self._marks_together(marks)
        elif marks:
            job, addresses = marks[0]
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

    async def _marks_together(self, marks: Sequence[tuple[Job, Sequence[str]]]) -> None:
        """Several jobs' hooks for one write, awaited at once rather than in
        turn: a store worker's claims are jobs of their own, and a window of
        ten transactions from ten claims waited for ten commits one after
        another where the writer makes them one.  Failures as in
        ``_data_end``: a refusal (SMTPError) ends the session, anything else
        fails its job; either way no end of data of the write leaves."""
        failures: list[tuple[Job, Exception]] = []

        async def mark(job: Job, addresses: Sequence[str]) -> None:
            hook = job.options.on_in_doubt
            assert hook is not None
            try:
                await hook(addresses)
            except Exception as exc:
                failures.append((job, exc))

        try:
            async with trio.open_nursery() as nursery:
                for job, addresses in marks:
                    nursery.start_soon(mark, job, addresses)
        except BaseExceptionGroup as group:
            if group.split(trio.Cancelled)[1] is None:
                # cancelled (each hook catches its Exceptions): bare, as the
                # one-job path raises it, so the session drains its batch
                raise _first(group) from None
            raise
        refusal = next((exc for _, exc in failures if isinstance(exc, SMTPError)), None)
        for job, exc in failures:
            if not isinstance(exc, SMTPError):
                job.fail(exc)
        if refusal is not None:
            raise refusal
        if failures:
            raise _HookFailed from failures[0][1]

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


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of ``group``, however deeply nested."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
