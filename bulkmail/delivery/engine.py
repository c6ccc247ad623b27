"""The delivery engine: recipients in, exactly one final result per recipient out.

It routes each recipient to a destination, feeds that destination's pool,
applies the reply policy to what comes back (as the pools' :class:`PoolOwner`
and :class:`Outcomes`, the latter from ``outcomes.py``), and schedules
retries.  Every recipient a job admits is counted as outstanding until it has
a result, so a job cannot finish while anybody is unaccounted for -- also
when it is stopped, aborted or cancelled.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from ..errors import synthetic_reply
from ..message import Content
from ..protocol.replies import Reply
from ..reactions import ReactionRule, rules_for
from ..results import Status
from ..routing import Destination, Router, RoutingError, domain_of
from ..warmup import Counters, WarmupGate, gate_for
from ..warmup_store import WarmupCounters
from .connector import ConnectionFailure, Connector
from .engine_config import EngineConfig
from .health import HealthRegistry, ShapingAction
from .intake import Intake, Recipients
from .job import Item, Job, JobOptions
from .limiter import DestinationLimiter
from .observed import EngineState
from .outcomes import STOPPED, RecipientOutcomes
from .policy import classify
from .pool import Pool
from .retry import RetryQueue

#: transactions a BDAT session may always have in flight (``Engine.write_ahead``)
MIN_WRITE_AHEAD = 2

CANCELLED = synthetic_reply(451, "4.3.2", "run cancelled before this recipient was attempted")

#: domains whose pool key (their site's, or their own under a shaping rule)
#: is remembered; starts over when full (only kept when there are rules)
MAX_POOL_KEYS = 10_000


class Engine(RecipientOutcomes):
    """Pools, routing and retries for any number of jobs, inside one nursery
    (what becomes of each recipient: :class:`RecipientOutcomes`)."""

    def __init__(self, config: EngineConfig, router: Router, nursery: trio.Nursery) -> None:
        self.config = config
        self.router = router
        self.nursery = nursery
        self.pools: dict[str, Pool] = {}
        #: no new transaction starts (stop, abort); in-flight ones finish
        self.stopping = False
        #: why the run was aborted (see :meth:`abort`)
        self.aborted: Reply | None = None
        self.rng = random.Random(config.seed)
        self.intake = Intake(
            config.max_pending, dispatch=self.dispatch, invalid=self.invalid,
            # a relay resolves nothing per domain: no reading ahead for it (it
            # cost three calls per recipient read while max_pending were in memory)
            prefetch=router.prefetch if router.prefetches else None,
        )
        self._limiter = trio.CapacityLimiter(config.total_connections)
        self._health = HealthRegistry(pipelining=config.session.use_pipelining)
        self._retries = RetryQueue(nursery, self.dispatch)
        self._resolving: dict[str, list[Item]] = {}
        self._pool_keys: dict[str, tuple[Destination, str]] = {}
        #: a shaping rule may set a domain apart from its site (the config is frozen)
        self._own_rules = bool(config.shaping.rules)
        self._jobs: set[Job] = set()
        #: recipients admitted by jobs already forgotten: the in-doubt share is
        #: of everything this engine admitted, not of the jobs still open
        self._retired_admitted = 0
        self.metrics = config.metrics
        if self.metrics is not None:
            self.metrics.view = EngineState(self.pools, self._health, self._retries)
        #: limits shared with other processes (store workers); None: this one alone
        self.destination_limiter: DestinationLimiter | None = None
        #: destinations a ``bounce-rest`` rule closed, per job, with the reply they get
        self._bounce_rest: dict[Job, dict[str, Reply]] = {}
        if config.wall_clock is not None:
            self.wall_clock = config.wall_clock
        else:
            epoch = time.time() - trio.current_time()
            self.wall_clock = lambda: epoch + trio.current_time()
        self._warmup_counters: WarmupCounters | None = None
        #: store workers: warm-up counters and hold notes shared through the store
        self.shared_warmup: Counters | None = None
        self.on_hold: Callable[[str, float], None] | None = None
        #: failed connection attempts per destination key (only with an observer)
        self._connect_failures: dict[str, int] = {}

        #: domains resolved ahead by the router (no task each) / by a task of their own
        self.prefetched = 0
        self.resolve_tasks = 0
        self._prefetch_scope = trio.CancelScope()
        nursery.start_soon(self._run_prefetcher)

    def close(self) -> None:
        """Release what outlives a run's tasks (the warm-up counters' file)."""
        if self._warmup_counters is not None:
            self._warmup_counters.close()
            self._warmup_counters = None

    def __repr__(self) -> str:
        state = "aborted" if self.aborted else "stopping" if self.stopping else "running"
        return (
            f"<Engine {state} [{len(self._jobs)} jobs, {len(self.pools)} pools,"
            f" {len(self._retries)} waiting to retry]>"
        )

    # -- jobs ----------------------------------------------------------------------

    def open_job(self, sender: str, content: Content, options: JobOptions) -> Job:
        job = Job(
            sender, content, options, release=self.intake.release,
            retry_for=self.config.retry_for,
        )
        self._jobs.add(job)
        job.metrics = self.metrics
        if self.stopping:  # a stopped engine takes nothing new
            job.closed = True
            job.summary.aborted = self.aborted
        return job

    async def feed(self, job: Job, recipients: Recipients) -> None:
        """Admit ``recipients`` into ``job``; then its input has ended."""
        try:
            await self.intake.feed(job, recipients)
        finally:
            job.end_of_input()
            self.wake_pools()

    def forget(self, job: Job) -> None:
        if job in self._jobs:  # what it admitted still counts for the in-doubt share
            self._retired_admitted += job.outstanding + job.summary.total
        self._jobs.discard(job)
        self._bounce_rest.pop(job, None)

    def cancel(self, job: Job, reason: Reply = CANCELLED) -> None:
        """End ``job`` now: queued and waiting recipients end deferred with
        ``reason``, and its transactions in flight are cut short (whoever's
        end of data may have left ends deferred and flagged possible_duplicate).
        The results come as the pools' workers run next: await ``job.finished``."""
        self._close(job, reason)
        for pool in list(self.pools.values()):
            pool.interrupt(job)

    def _close(self, job: Job, reason: Reply) -> None:
        if job.closed and job.close_reason is not None:
            return
        job.closed = True
        job.close_reason = reason
        for pool in list(self.pools.values()):
            for item in pool.take_queued(job):
                self.abandon(item)
        for domain in list(self._resolving):
            waiting = self._resolving[domain]
            self._resolving[domain] = [item for item in waiting if item.job is not job]
            for item in waiting:
                if item.job is job:
                    self.abandon(item)
        for item in self._retries.take(lambda item: item.job is job):
            self.abandon(item)

    def stop(self, reason: Reply = STOPPED) -> None:
        """Take no new work: no new transaction starts, what is queued or waiting
        to retry ends deferred, in-flight transactions finish."""
        self.stopping = True
        for job in list(self._jobs):
            job.closed = True
            if job.close_reason is None:
                job.close_reason = reason
        for pool in list(self.pools.values()):
            for item in pool.take_queued():
                self.abandon(item)
        for domain in list(self._resolving):
            for item in self._resolving.pop(domain):
                self.abandon(item)
        for item in self._retries.take():
            self.abandon(item)
        self._prefetch_scope.cancel()  # nothing more to resolve: let the nursery end
        self.wake_pools()

    def abort(self, reason: Reply) -> None:
        """Stop with a reason (an authentication failure, a journal that cannot
        be written): like :meth:`stop`, and every job's ``Summary.aborted``
        says why.  The first reason wins."""
        if self.aborted is None:
            self.aborted = reason
        for job in self._jobs:
            if job.summary.aborted is None:
                job.summary.aborted = self.aborted
        self.stop(self.aborted)

    # -- capacity ------------------------------------------------------------------

    @asynccontextmanager
    async def connection_slot(self) -> AsyncIterator[None]:
        async with self._limiter:
            yield

    def connection_waiters(self) -> bool:
        return self._limiter.statistics().tasks_waiting > 0

    def routing(self) -> bool:
        return bool(self._resolving)

    def write_ahead(self, limit: int, per_transaction: float) -> int:
        """How many transactions one BDAT session may have in flight: at most
        ``limit`` (its window), and every session together at most
        ``in_doubt_share`` of the recipients admitted so far -- but never
        fewer than ``MIN_WRITE_AHEAD`` (unless the window is).  Why a share:
        what is in flight when the process is killed is sent again (flagged),
        so this bounds the
        duplicates of a crash; a big list, where speed matters most, soon
        earns the whole window (issue 15: 10 connections, 20 ms round trip
        and 4,000 messages keep a kill under 1%, where a window of 32
        duplicated 5.6-8%)."""
        share = self.config.in_doubt_share
        if share <= 0:
            return limit
        admitted = self._retired_admitted
        for job in self._jobs:
            admitted += job.outstanding + job.summary.total
        sessions = max(1, self._limiter.borrowed_tokens)
        budget = int(admitted * share / sessions / max(1.0, per_transaction))
        return min(limit, max(MIN_WRITE_AHEAD, budget))  # (a window below the floor holds)

    # -- routing -------------------------------------------------------------------

    def dispatch(self, item: Item, domain: str | None = None) -> None:
        if item.job.closed:
            self.abandon(item)
            return
        if domain is None:
            domain = domain_of(item.recipient.address)
        destination = self.router.peek(domain)  # the router's TTL cache
        if destination is not None:
            self._to_pool(item, destination, domain)
            return
        # one lookup per domain, however many recipients wait on it
        waiting = self._resolving.get(domain)
        if waiting is not None:
            waiting.append(item)
            return
        self._resolving[domain] = [item]
        if self.router.prefetch(domain):
            self.prefetched += 1  # the router's prefetcher resolves it: no task here
            return
        # cached as a failure, the prefetch queue full, or a router that does
        # not resolve ahead (a relay): one task awaits route()
        self.resolve_tasks += 1
        self.nursery.start_soon(self._resolve, domain)

    async def _run_prefetcher(self) -> None:
        with self._prefetch_scope:
            await self.router.run_prefetcher(self._on_resolved)

    def _on_resolved(self, domain: str, outcome: Destination | RoutingError) -> None:
        """A domain's lookup ended: its waiting recipients go to their pool
        (or are settled with the routing error).  stop() may have settled
        them meanwhile, and a domain prefetched by someone else has nobody."""
        waiting = self._resolving.pop(domain, None)
        if not self._resolving:
            self._resolving = {}  # a dict keeps its peak's table when emptied
            if waiting and any(job.input_done for job in self._jobs):
                # the last route is in: parked workers slept for the longer
                # linger (Pool._linger); their queues may go now (_all_in)
                self.wake_pools()
        if not waiting:
            return
        if isinstance(outcome, RoutingError):
            verdict = classify(None, outcome.reply)
            for item in waiting:
                self.attempted(item, outcome.reply, verdict, None)
            return
        for item in waiting:
            self._to_pool(item, outcome, domain)

    async def _resolve(self, domain: str) -> None:
        outcome: Destination | RoutingError
        try:
            outcome = await self.router.route(domain)
        except RoutingError as exc:
            outcome = exc
        self._on_resolved(domain, outcome)

    def _to_pool(self, item: Item, destination: Destination, domain: str) -> None:
        if self._bounce_rest:  # (empty unless a bounce-rest rule fired)
            closed = self._bounce_rest.get(item.job, {}).get(destination.key)
            if closed is not None:
                item.job.finish(item, Status.BOUNCED, closed)
                return
        item.domain = domain
        key = item.site = destination.key
        if self._own_rules:  # else every domain takes its site's pool
            key = self._pool_key(destination, domain)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = self._open_pool(key, destination, domain)
        pool.add(item)

    def _pool_key(self, destination: Destination, domain: str) -> str:
        """The site's key, or ``site|pattern`` for a domain a shaping rule of
        its own sets apart (remembered per domain, boundedly)."""
        known = self._pool_keys.get(domain)
        if known is not None and known[0] is destination:
            return known[1]
        hosts = [h.name for h in destination.hosts]
        rule = self.config.shaping.own_rule(domain, hosts)
        key = destination.key if rule is None else f"{destination.key}|{rule.pattern}"
        if len(self._pool_keys) >= MAX_POOL_KEYS:
            self._pool_keys.clear()
        self._pool_keys[domain] = (destination, key)
        return key

    def _open_pool(self, key: str, destination: Destination, domain: str) -> Pool:
        shaping = self.config.shaping
        hosts = [h.name for h in destination.hosts]
        # a site's limits come from its host names, never from whichever of
        # its domains happened to arrive first
        rule = shaping.site_rule(hosts) if key == destination.key \
            else shaping.own_rule(domain, hosts)
        limits = shaping.default if rule is None else rule.limits
        if key != destination.key:
            destination = replace(destination, key=key)
        session = self.config.session  # the destination's own stage deadlines, if any
        session = replace(session, timeouts=limits.session_timeouts(session.timeouts))
        connector = Connector(session, destination, limits.source_addresses, self.rng)
        return Pool(
            self, destination, limits, self._health.of(key, limits.connections),
            connector, linger=self.config.linger,
            window=self.config.session.chunking_window, batch_by=self.config.batch_by,
            metrics=self.metrics, reactions=rules_for(shaping.reactions, [domain, *hosts]),
            warmup=self._warmup_gate([domain, *hosts]),
        )

    def _warmup_gate(self, names: list[str]) -> WarmupGate | None:
        rules = self.config.shaping.warmup
        if not rules:
            return None
        if self.shared_warmup is not None:
            return gate_for(rules, names, self.shared_warmup, self.wall_clock)
        if self._warmup_counters is None:
            path = self.config.warmup_store or ":memory:"
            self._warmup_counters = WarmupCounters(path, now=self.wall_clock())
        return gate_for(rules, names, self._warmup_counters, self.wall_clock)

    def connection_failed(self, destination: Destination, reply: Reply, host: str | None,
                          pause_until: float) -> None:
        """No host of ``destination`` answered: tell the observer, if any."""
        observer = self.config.on_connection_failure
        if observer is None:
            return
        key = destination.key
        failures = self._connect_failures[key] = self._connect_failures.get(key, 0) + 1
        next_try = max(0.0, pause_until - trio.current_time())
        observer(ConnectionFailure(key, reply, host, failures, next_try))

    def pool_idle(self, pool: Pool) -> None:
        key = pool.destination.key
        if self.pools.get(key) is pool and pool.idle:
            del self.pools[key]
            self._health.release(key)  # kept only while it remembers a failure

    def wake_pools(self) -> None:
        for pool in list(self.pools.values()):
            pool.wake()

    # -- reply rules and holds -----------------------------------------------------

    def react(
        self, pool: Pool, rule: ReactionRule, reply: Reply, source: str | None, job: Job | None
    ) -> None:
        """Apply ``rule``'s action for ``reply`` to the destination's health (so
        every pool and job using it obeys), or bounce the rest of ``job`` there;
        report it once when it starts (not again while it is extended)."""
        now = trio.current_time()
        action = ShapingAction(
            rule.action, pool.destination.key, reply, rule.name, rule.duration,
            now + rule.duration, self.wall_clock() + rule.duration,
            source if rule.action == "suspend-source" else None, rule.connections, rule.rate,
            job,
        )
        if rule.action == "bounce-rest":
            if job is None or not self._close_destination(job, pool, action):
                return
        elif not pool.health.apply(action):
            return
        if self.config.on_shaping_action is not None:
            self.config.on_shaping_action(action)

    def _close_destination(self, job: Job, pool: Pool, action: ShapingAction) -> bool:
        """Bounce ``job``'s recipients for ``pool``'s destination: queued, waiting
        to retry, and any still to come.  False if it was closed already."""
        key = pool.destination.key
        closed = self._bounce_rest.setdefault(job, {})
        if key in closed:
            return False
        reply = closed[key] = synthetic_reply(
            550, "5.7.1",
            f"not sent: {key} answered \"{action.reply}\" and shaping rule {action.rule}"
            " bounces the rest of this job there",
        )

        def routed_here(item: Item) -> bool:
            destination = self.router.peek(domain_of(item.recipient.address))
            return item.job is job and destination is not None and destination.key == key

        for item in [*pool.take_queued(job), *self._retries.take(routed_here)]:
            job.finish(item, Status.BOUNCED, reply)
        return True

    def hold(self, item: Item, delay: float, reply: Reply) -> None:
        """Wait ``delay`` seconds without spending an attempt (a suspension, a
        warm-up cap), then route again; a job that cannot wait that long (its
        retry deadline, or else the retry lifetime from its start) ends it
        deferred with ``reply`` now -- resumable, never bounced."""
        job = item.job
        item.last_reply = reply
        due = trio.current_time() + delay
        deadline = job.retry_deadline
        if deadline is None:
            deadline = job.started + self.config.retry.lifetime
        if job.closed or due > deadline:
            if self.on_hold is not None:  # (a store worker: its next attempt is then)
                self.on_hold(item.recipient.address, delay)
            job.finish(item, Status.DEFERRED, reply)
            return
        self._retries.schedule(item, due)

    def apply_shared(self, action: ShapingAction) -> None:
        """Another worker's reply rule acted (read from the shared store): obey
        it as if a reply here had triggered it (not reported again)."""
        self._health.apply_shared(action, trio.current_time())
        pool = self.pools.get(action.destination)
        if pool is not None and action.kind == "suspend":
            for item in pool.take_queued():
                self.hold(item, action.until - trio.current_time(), action.reply)
