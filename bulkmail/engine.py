"""The delivery engine: recipients in, exactly one final result per recipient out.

It routes each recipient to a destination, feeds that destination's pool,
applies the reply policy to what comes back, and schedules retries.  Every
recipient it accepts is counted as outstanding until it produces a result, so
a job cannot finish while anybody is unaccounted for.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from .config import SessionConfig
from .errors import synthetic_reply
from .message import Content, Recipient
from .policy import DestinationHealth, RetryPolicy, Verdict, classify
from .pool import Pool
from .protocol import commands
from .protocol.data import PreparedMessage
from .protocol.errors import InvalidAddress
from .protocol.replies import Reply
from .results import Result, Status, Summary
from .routing import Destination, Router, RoutingError, domain_of
from .session import Envelope
from .shaping import Shaping
from .verp import verp_sender

ResultCallback = Callable[[Result], None]
ResultsCallback = Callable[[Sequence[Result]], None]
InDoubtHook = Callable[[Sequence[str]], Awaitable[None]]
Presettle = Callable[[Recipient], "tuple[Status, Reply | None, int] | None"]

#: a dead pooled session may be replaced this many times per recipient for free
MAX_FREE_RETRIES = 3
#: domains whose intake facts are remembered; a list of mostly unique domains
#: starts over instead of growing without bound
MAX_INTAKE_DOMAINS = 100_000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    session: SessionConfig
    shaping: Shaping = field(default_factory=Shaping)
    total_connections: int = 200
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: seconds this run keeps retrying deferred recipients (None: the retry policy's lifetime)
    retry_for: float | None = None
    #: recipients held in memory at once: the producer waits beyond this
    max_pending: int = 20_000
    linger: float = 0.05
    seed: int | None = None


@dataclass(eq=False, slots=True)
class Item:
    """One recipient on its way through the engine."""

    recipient: Recipient
    job: Job
    attempts: int = 0
    free_retries: int = 0
    first_attempt: float | None = None
    possible_duplicate: bool = False
    last_reply: Reply | None = None
    last_host: str | None = None

    def attempt(self, reply: Reply, host: str | None, now: float) -> None:
        """Count one attempt that got ``reply`` (from ``host``, when known)."""
        self.attempts += 1
        if self.first_attempt is None:
            self.first_attempt = now
        self.last_reply = reply
        if host is not None:
            self.last_host = host


class Job:
    """One send: a sender, a content, a stream of recipients."""

    def __init__(
        self, engine: Engine, sender: str, content: Content, on_result: ResultCallback | None
    ) -> None:
        self.engine = engine
        self.sender = sender
        self.content = content
        self.on_result = on_result
        #: results in the groups they finished in (see ``Mailer.send``)
        self.on_results: ResultsCallback | None = None
        self.summary = Summary()
        self.outstanding = 0
        self.input_done = False
        self.started = trio.current_time()
        retry_for = engine.config.retry_for
        self.retry_deadline = None if retry_for is None else self.started + retry_for
        self.done = trio.Event()
        #: a unique envelope sender per recipient: one recipient per transaction
        self.verp = False
        self._seen: set[str] = set()

    @property
    def one_per_transaction(self) -> bool:
        """Personalised content or VERP: recipients cannot share a transaction."""
        return self.content.personalised or self.verp

    def envelope(self, recipients: list[str], message: PreparedMessage) -> Envelope:
        sender = self.sender
        if self.verp and sender:
            sender = verp_sender(sender, recipients[0])
        return Envelope(sender, recipients, message, validated=True)  # checked in add()

    def finish(self, item: Item, status: Status, reply: Reply | None) -> None:
        self.finish_all((item,), status, reply)

    def finish_all(self, items: Sequence[Item], status: Status, reply: Reply | None) -> None:
        """The final results of items of this job that share a status and a reply
        (a transaction's), counted and reported in one pass."""
        results = [
            Result(
                item.recipient.address, status, reply, item.attempts, item.last_host,
                item.possible_duplicate,
            )
            for item in items
        ]
        self.summary.add_all(results, status, reply)
        on_result = self.on_result
        if on_result is not None:
            for result in results:
                on_result(result)
        if self.on_results is not None:
            self.on_results(results)
        self.outstanding -= len(results)
        self.engine.release(len(results))
        self._check_done()

    def _check_done(self) -> None:
        if self.input_done and self.outstanding == 0:
            self.summary.elapsed = trio.current_time() - self.started
            self.done.set()

    def end_of_input(self) -> None:
        self.input_done = True
        self._check_done()
        self.engine.wake_pools()

    def first_sighting(self, key: str) -> bool:
        """True once per address (``key``: its domain lower-cased): the same
        address twice is sent once."""
        seen = self._seen
        before = len(seen)
        seen.add(key)  # one hash lookup, not a test and then an add
        return len(seen) != before


class Engine:
    """Pools, routing and retries for any number of jobs, inside one nursery."""

    def __init__(self, config: EngineConfig, router: Router, nursery: trio.Nursery) -> None:
        self.config = config
        self.router = router
        self.nursery = nursery
        self.linger = config.linger
        self.pools: dict[str, Pool] = {}
        self.stopping = False
        self.rng = random.Random(config.seed)
        self.on_in_doubt: InDoubtHook | None = None
        #: decides a recipient's result without sending (suppressed, already final)
        self.presettle: Presettle | None = None
        self._limiter = trio.CapacityLimiter(config.total_connections)
        # recipients in memory; a producer at the cap waits for a refill mark,
        # not for each single slot (one wakeup per recipient cost ~15% at 10k/s)
        self._in_memory = 0
        self._resume_at = config.max_pending - max(1, config.max_pending // 8)
        self._room = trio.lowlevel.ParkingLot()
        self._intake_domains: dict[str, tuple[str, str | None]] = {}
        self._health: dict[str, DestinationHealth] = {}
        self._resolving: dict[str, list[Item]] = {}
        self._retries: list[tuple[float, int, Item]] = []
        self._retry_seq = 0
        self._retry_wakeup = trio.lowlevel.ParkingLot()
        self._retry_task_running = False

    # -- capacity ----------------------------------------------------------------

    @asynccontextmanager
    async def connection_slot(self) -> AsyncIterator[None]:
        async with self._limiter:
            yield

    def connection_waiters(self) -> bool:
        return self._limiter.statistics().tasks_waiting > 0

    def release(self, n: int = 1) -> None:
        self._in_memory -= n
        if self._room and self._in_memory <= self._resume_at:
            self._room.unpark_all()

    # -- intake ------------------------------------------------------------------

    async def submit(self, job: Job, recipients: Iterable[Recipient | str]) -> None:
        """Feed recipients (blocking while ``max_pending`` are in memory)."""
        admit = self._admit
        for n, recipient in enumerate(recipients):
            if self.stopping:
                break
            if self._in_memory >= self.config.max_pending:
                await self._wait_for_room()
            admit(job, recipient)  # no coroutine per recipient on the fast path
            if n % 256 == 255:
                await trio.lowlevel.checkpoint()

    async def add(self, job: Job, recipient: Recipient | str) -> None:
        if self._in_memory >= self.config.max_pending:
            await self._wait_for_room()
        self._admit(job, recipient)

    async def _wait_for_room(self) -> None:
        while self._in_memory > self._resume_at:
            await self._room.park()

    def _admit(self, job: Job, recipient: Recipient | str) -> None:
        """Take one recipient in: dedupe, presettle, validate, route (never waits)."""
        if isinstance(recipient, str):
            recipient = Recipient(recipient)
        address = recipient.address.strip()
        if address != recipient.address:
            recipient = Recipient(address, recipient.variables, recipient.possible_duplicate)
        local, at, domain_part = address.rpartition("@")
        if at:
            facts = self._intake_domains.get(domain_part) or self._learn_domain(domain_part)
            lowered, plain_domain = facts
        else:  # no domain at all: validation below refuses it
            lowered, plain_domain = domain_part.lower(), None
        if not job.first_sighting(
            address if at and lowered == domain_part else f"{local}@{lowered}"
        ):
            return
        self._in_memory += 1
        job.outstanding += 1
        item = Item(recipient, job, 0, 0, None, recipient.possible_duplicate)  # positional: faster
        if self.presettle is not None:
            decided = self.presettle(recipient)
            if decided is not None:
                status, reply, item.attempts = decided
                job.finish(item, status, reply)
                return
        if plain_domain is not None and commands.is_plain_local(address, local):
            domain = plain_domain  # commands.is_plain(), its domain half learnt once
        else:
            try:
                commands.validate_address(address, smtputf8=True)
                domain = domain_of(address)
            except (InvalidAddress, ValueError) as exc:
                reason = exc.reason if isinstance(exc, InvalidAddress) else str(exc)
                self.invalid(item, reason)
                return
        self.dispatch(item, domain)

    def _learn_domain(self, domain_part: str) -> tuple[str, str | None]:
        """What intake needs of a domain, computed once per domain: its lower
        case, and its routing key if it is a plain ASCII one (else ``None``:
        every address there takes the full validation)."""
        known = self._intake_domains
        if len(known) >= MAX_INTAKE_DOMAINS:
            known.clear()
        lowered = domain_part.lower()
        if lowered == domain_part:
            lowered = domain_part  # one string, not an equal copy, per domain
        plain = lowered.rstrip(".") if commands.is_plain_domain(domain_part) else None
        known[domain_part] = facts = (lowered, plain)  # domain_of() for a plain domain
        return facts

    def dispatch(self, item: Item, domain: str | None = None) -> None:
        if self.stopping:
            self.abandon(item)
            return
        if domain is None:
            domain = domain_of(item.recipient.address)
        destination = self.router.peek(domain)  # the router's TTL cache
        if destination is not None:
            self._to_pool(item, destination, domain)
            return
        # one resolving task per domain, however many recipients wait on it
        waiting = self._resolving.get(domain)
        if waiting is not None:
            waiting.append(item)
            return
        self._resolving[domain] = [item]
        self.nursery.start_soon(self._resolve, domain)

    async def _resolve(self, domain: str) -> None:
        try:
            destination = await self.router.route(domain)
        except RoutingError as exc:
            # (stop() may have settled this domain's waiters meanwhile)
            for item in self._resolving.pop(domain, []):
                self.attempted(item, exc.reply)
            return
        for item in self._resolving.pop(domain, []):
            self._to_pool(item, destination, domain)

    def _to_pool(self, item: Item, destination: Destination, domain: str) -> None:
        pool = self.pools.get(destination.key)
        if pool is None:
            hosts = [h.name for h in destination.hosts]
            limits = self.config.shaping.limits_for(domain, hosts)
            pool = Pool(self, destination, limits)
            self.pools[destination.key] = pool
        pool.add(item)

    def health_of(self, key: str, max_concurrency: int) -> DestinationHealth:
        health = self._health.get(key)
        if health is None:
            health = DestinationHealth(max_concurrency)
            health.pipelining = self.config.session.use_pipelining
            self._health[key] = health
        return health

    def pool_idle(self, pool: Pool) -> None:
        if self.pools.get(pool.destination.key) is pool and pool.idle:
            del self.pools[pool.destination.key]

    def wake_pools(self) -> None:
        for pool in list(self.pools.values()):
            pool.wake()

    # -- outcomes ----------------------------------------------------------------

    def invalid(self, item: Item, reason: str) -> None:
        """Bounce a recipient we refuse to send to (bad address, bad template value)."""
        item.job.finish(item, Status.BOUNCED, synthetic_reply(553, "5.1.3", reason))

    def unattempted(self, item: Item, reply: Reply, pool: Pool) -> None:
        """Nothing reached the server for this item (dead pooled session): retry now."""
        item.free_retries += 1
        if item.free_retries > MAX_FREE_RETRIES:
            self.attempted(item, reply, host=None)
            return
        pool.add(item, front=True)

    def delivered(self, items: Sequence[Item], reply: Reply, host: str) -> None:
        """``attempted`` for a transaction whose one reply accepted everyone."""
        now = trio.current_time()
        for item in items:
            item.attempt(reply, host, now)
        items[0].job.finish_all(items, Status.DELIVERED, reply)

    def attempted(
        self,
        item: Item,
        reply: Reply,
        *,
        host: str | None = None,
        in_doubt: bool = False,
        others_accepted: bool = False,
        pool: Pool | None = None,
    ) -> None:
        """Apply the reply policy to one recipient's attempt."""
        now = trio.current_time()
        item.attempt(reply, host, now)
        job = item.job
        if in_doubt:
            item.possible_duplicate = True
            reply = synthetic_reply(
                451, "4.4.2", f"connection lost after end of data; delivery in doubt ({reply.text})"
            )
            item.last_reply = reply
            self._defer(item, reply, now)
            return
        verdict = classify(reply, others_accepted=others_accepted)
        if verdict is Verdict.DELIVERED:
            job.finish(item, Status.DELIVERED, reply)
        elif verdict is Verdict.BOUNCED:
            job.finish(item, Status.BOUNCED, reply)
        elif verdict is Verdict.RESUBMIT and pool is not None:
            item.attempts -= 1
            pool.add(item, front=True)
        else:
            self._defer(item, reply, now)

    def _defer(self, item: Item, reply: Reply, now: float) -> None:
        job = item.job
        policy = self.config.retry
        first = item.first_attempt if item.first_attempt is not None else now
        due = policy.next_attempt(max(1, item.attempts), first, now, self.rng)
        if due is None:
            expired = synthetic_reply(
                550,
                "5.4.7",
                f"delivery time expired after {item.attempts} attempts; last reply: {reply}",
            )
            job.finish(item, Status.BOUNCED, expired)
            return
        if self.stopping or (job.retry_deadline is not None and due > job.retry_deadline):
            job.finish(item, Status.DEFERRED, reply)
            return
        self._retry_seq += 1
        heapq.heappush(self._retries, (due, self._retry_seq, item))
        self._retry_wakeup.unpark_all()
        if not self._retry_task_running:
            self._retry_task_running = True
            self.nursery.start_soon(self._retry_loop)

    async def _retry_loop(self) -> None:
        """Re-dispatch deferred recipients when their time comes."""
        try:
            while self._retries:
                due = self._retries[0][0]
                now = trio.current_time()
                if due > now:
                    with trio.move_on_at(due):
                        await self._retry_wakeup.park()
                    if self.stopping:
                        break
                    continue
                _, _, item = heapq.heappop(self._retries)
                self.dispatch(item)
        finally:
            self._retry_task_running = False
            if self.stopping:
                self.abandon_retries()

    def abandon_retries(self) -> None:
        """On stop: everyone waiting for a retry ends deferred (resumable)."""
        while self._retries:
            self.abandon(heapq.heappop(self._retries)[2])

    def abandon(self, item: Item) -> None:
        """After stop(): the recipient ends deferred, resumable, with its last reply."""
        reply = item.last_reply or synthetic_reply(
            451, "4.3.2", "run stopped before this recipient was attempted"
        )
        item.job.finish(item, Status.DEFERRED, reply)

    def stop(self) -> None:
        """Take no new work; what is queued ends deferred once in-flight work settles."""
        self.stopping = True
        self.wake_pools()
        self._retry_wakeup.unpark_all()
        for pool in list(self.pools.values()):
            while pool.queue:
                self.abandon(pool.queue.popleft())
        for domain in list(self._resolving):
            for item in self._resolving.pop(domain):
                self.abandon(item)
        self.abandon_retries()

    async def on_data_end(self, envelopes: Sequence[Envelope]) -> None:
        """Called before an end of data leaves: the journal marks those recipients in doubt."""
        hook = self.on_in_doubt
        if hook is not None:
            await hook([r for e in envelopes for r in e.recipients])
