"""A worker: claims recipients from the store, sends them through one long-lived
:class:`~bulkmail.Mailer`, writes their results back.

Several claims are in flight at once (one ``mailer.send`` each, sharing the
mailer's pools), so many destinations are busy while the database round trips
happen in threads.  The engine never retries here: a deferred recipient goes
back to the store with its next attempt from the job's retry schedule, and
whichever worker is free then takes it -- a retry does not wait for the
worker that deferred it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import trio

from ..api import Mailer, MailerConfig
from ..delivery.health import ShapingAction
from ..durable import outcome_of
from ..errors import synthetic_reply
from ..journal.base import Outcome
from ..policy import RetryPolicy
from ..results import FINAL, Result, Status
from .aio import AsyncStore, keep_leases
from .errors import StoreError
from .job_spec import JobSpec
from .job_state import job_ended, load_job, open_jobs
from .leases import Claim, new_owner_id
from .limiter import PgDestinationLimiter
from .shared_shaping import SharedShaping
from .store import PgStore
from .worker_hooks import InFlight, install_store_hooks, send_claimed
from .writer import StoreWriter

__all__ = [
    "EX_OK", "EX_TEMPFAIL", "STORE_CONNECTIONS", "JobRun", "Worker", "WorkerSettings",
    "run_worker",
]

EX_OK, EX_TEMPFAIL = 0, 75

#: database connections per worker: heartbeat, claims, the shared limits and
#: the seat shares, plus the writer's (two in-doubt mark commits at once, and
#: result commits)
STORE_CONNECTIONS, WRITER_CONNECTIONS = 8, 3


# What a worker holds, and in what pieces.  A claim is one destination's
# recipients (a domain's) and becomes one ``mailer.send``; a claim statement
# takes up to ``DESTINATIONS_PER_CLAIM`` destinations (``leases.claim_many``),
# and the worker claims again whenever a claim's worth of room is free, up to
# ``max_leased`` recipients and ``claims_in_flight`` destinations.
#
# Why destinations of at most 125: the engine's sessions are per MX site, and
# a worker holding a few big claims often holds none for some site -- eight
# claims of 500 over four sites left one without work about (3/4)^8 = 10% of
# the time, its session idle and its seat given up (scenario e, 3 workers,
# --scale 0.5: seats held 89% of the time -> 94% with claims of 125).  Why
# many destinations per statement: a long tail of one-recipient domains held
# 32 recipients at a time and cost a statement each (5,000 domains: 157/s).
@dataclass(frozen=True, slots=True)
class WorkerSettings:
    job: int | None = None  #: one job, or every active job
    follow: bool = False  #: keep waiting for new work instead of exiting when done
    lease: float = 30.0  #: seconds a claim stays ours without a heartbeat
    claim_size: int = 125  #: most recipients of one destination per claim
    max_leased: int = 4000  #: recipients held at once (claimed, not final yet)
    claims_in_flight: int = 256  #: claims held at once (a ``mailer.send`` each)
    max_idle: float = 1.0  #: longest wait between claims when nothing is ready


#: destinations one claim statement takes at most: few enough that PostgreSQL
#: walks the rotation index instead of sorting the job's every destination
DESTINATIONS_PER_CLAIM = 16


@dataclass(slots=True)
class JobRun:
    """What a worker needs of one job, loaded once."""

    id: int
    spec: JobSpec
    policy: RetryPolicy
    started: float  #: unix time the first worker started on the job
    rng: random.Random = field(default_factory=random.Random)

    @property
    def retry_until(self) -> float:
        return self.started + self.spec.retry_for

    def outcome(self, result: Result, earlier_attempts: int, now: float,
                dues: dict[int, float | None], held: float | None = None) -> Outcome:
        """The store's record of ``result``: attempts counted over all workers,
        and for a deferral its next attempt (shared by a call's recipients
        with the same attempt count, so they stay one write; ``held``: when
        the hold that deferred it ends)."""
        base = outcome_of(result)
        attempts = earlier_attempts + result.attempts
        if held is not None and result.status is Status.DEFERRED:
            # held back (a reply rule's suspension, a warm-up cap): no attempt
            # spent, and due when the hold ends, not after a retry's delay
            return Outcome(Status.DEFERRED, base.code, base.enhanced, base.reply, attempts,
                           base.host, held if held <= self.retry_until else None,
                           base.possible_duplicate)
        if result.status is Status.IN_DOUBT:
            # in doubt a second time: final, never sent a third time.  No next
            # attempt (infinity): no claim hands it out again, and the job can
            # end with it (``finish_if_done``), as ``send`` ends such a recipient
            return Outcome(Status.IN_DOUBT, base.code, base.enhanced, base.reply, attempts,
                           base.host, math.inf, True)
        if result.status is not Status.DEFERRED:
            return Outcome(base.status, base.code, base.enhanced, base.reply, attempts,
                           base.host, None, base.possible_duplicate)
        if attempts not in dues:
            # the store keeps no first-attempt time: the policy's lifetime is not
            # applied (an old job must not bounce a recipient tried once), its
            # attempt limit is, and --retry-for bounds the retries anyway
            dues[attempts] = self.policy.next_attempt(max(1, attempts), now, now, self.rng)
        due = dues[attempts]
        if due is None:  # out of attempts: the engine's own verdict
            expired = synthetic_reply(
                550, "5.4.7",
                f"delivery time expired after {attempts} attempts; last reply: {result.reply}",
            )
            return Outcome(Status.BOUNCED, expired.code, expired.enhanced, expired.text,
                           attempts, base.host, None, base.possible_duplicate)
        next_attempt = due if due <= self.retry_until else None  # None: deferred for good
        return Outcome(Status.DEFERRED, base.code, base.enhanced, base.reply, attempts,
                       base.host, next_attempt, base.possible_duplicate)


class Worker:
    """Claims and sends until the job (or every job) is done, or ``stop()``."""

    def __init__(
        self,
        store: AsyncStore,
        writer: StoreWriter,
        mailer: Mailer,
        owner: str,
        in_flight: InFlight,
        settings: WorkerSettings,
        *,
        on_results: Callable[[Sequence[Result]], None] | None = None,
        shaping: SharedShaping | None = None,
    ) -> None:
        self.store = store
        self.shaping = shaping
        self.writer = writer
        self.mailer = mailer
        self.owner = owner
        self.in_flight = in_flight
        self.settings = settings
        self.on_results = on_results
        self.stopping = False
        #: jobs this worker sent for (their final counts decide the exit status)
        self.jobs: dict[int, JobRun] = {}
        self.claims = 0
        self.released = 0  #: recipients handed back unsent on stop
        self._leased = 0  #: recipients of the claims being sent
        self._held = 0  #: claims being sent
        self._loading: dict[int, trio.Event] = {}  #: jobs being loaded (``job_run``)
        #: id of a claim's result callback -> (stored job, claim's destination)
        self._claims: dict[int, tuple[int, str]] = {}
        if shaping is not None:
            shaping.claim_of = self.claim_of
        self._wake = trio.Event()

    def stop(self) -> None:
        """No new claims; transactions in flight finish, the rest go back unsent."""
        if self.stopping:
            return
        self.stopping = True
        self._wake.set()
        self.mailer.stop()

    async def run(self) -> int:
        """Work until done; the exit status: 0 when every recipient of the jobs
        worked is final, 75 when some are still deferred (or it was stopped)."""
        idle = 0.02
        settings = self.settings
        enough = min(settings.claim_size, settings.max_leased)  # room worth a claim
        async with trio.open_nursery() as claims:
            while not self.stopping:
                room = settings.max_leased - self._leased
                if room < enough or self._held >= settings.claims_in_flight:
                    await self._wake.wait()  # a claim ends (or stop())
                    continue
                got = await self.store.claim_many(
                    self.owner, settings.claim_size, settings.lease, job=settings.job,
                    max_items=room, max_destinations=min(
                        DESTINATIONS_PER_CLAIM, settings.claims_in_flight - self._held))
                if got:
                    idle = 0.02
                    for claim in got:
                        self.claims += 1
                        self._held += 1
                        self._leased += len(claim)
                        claims.start_soon(self._send_claim, claim)
                    continue
                if not settings.follow and await self._all_done():
                    break
                with trio.move_on_after(idle):
                    await self._wake.wait()
                idle = min(settings.max_idle, idle * 2)
        return await self._exit_status()

    def claim_of(self, job: object) -> tuple[int, str] | None:
        """The stored job and destination of the claim an engine job sends
        (known by the result callback this worker gave it)."""
        callback = getattr(getattr(job, "options", None), "on_results", None)
        return None if callback is None else self._claims.get(id(callback))

    async def _all_done(self) -> bool:
        job = self.settings.job
        if job is not None:
            return await self.store.call(lambda s: job_ended(s, job))
        jobs = await self.store.call(open_jobs)
        for job_id, loaded in jobs:
            if not loaded or not await self.store.call(
                    functools.partial(PgStore.finish_if_done, job=job_id)):
                return False
        return True

    async def _exit_status(self) -> int:
        if self.stopping:
            return EX_OK if self.settings.follow else EX_TEMPFAIL
        ids = list(self.jobs) if self.settings.job is None else [self.settings.job]
        for job in ids:
            counts = await self.store.call(functools.partial(PgStore.counts, job=job))
            if any(status not in FINAL and status is not Status.IN_DOUBT for status in counts):
                return EX_TEMPFAIL
        return EX_OK

    async def job_run(self, job: int) -> JobRun:
        """The job, loaded once: the claims of one statement start together,
        and only the first loads it (the others wait for that load)."""
        while (run := self.jobs.get(job)) is None:
            loading = self._loading.get(job)
            if loading is not None:
                await loading.wait()  # loaded, or failed: then this one tries
                continue
            self._loading[job] = loading = trio.Event()
            try:
                options, started = await self.store.call(lambda s: load_job(s, job))
                spec = JobSpec.from_options(options, job=job)
                spec.content()  # a job it cannot send (a key that does not sign): fail now
                self.jobs[job] = JobRun(job, spec, spec.retry_policy(), started)
            finally:
                del self._loading[job]
                loading.set()
        return run

    async def _send_claim(self, claim: Claim) -> None:
        try:
            run = await self.job_run(claim.job)
            closed = None if self.shaping is None else self.shaping.closed(
                claim.job, claim.destination)
            if closed is not None:  # a bounce-rest action closed it for this job
                by_attempts: dict[int, list[str]] = {}
                for r in claim.recipients:
                    by_attempts.setdefault(r.attempts, []).append(r.address)
                for attempts, addresses in by_attempts.items():
                    self.writer.submit_outcomes(claim.job, addresses, Outcome(
                        Status.BOUNCED, closed.code, closed.enhanced, closed.text, attempts))
                return
            claimed = {r.address: r for r in claim.recipients}
            unsent: list[str] = []
            reported: set[str] = set()

            def record(results: Sequence[Result]) -> None:
                now = time.time()
                dues: dict[int, float | None] = {}
                groups: dict[Outcome, list[str]] = {}
                for result in results:
                    address = result.recipient
                    reported.add(address)
                    known = claimed.get(address)
                    if (self.stopping and result.status is Status.DEFERRED
                            and result.attempts == 0):
                        unsent.append(address)  # never tried: back as it was, for anyone
                        continue
                    held = None
                    if self.shaping is not None and result.status is Status.DEFERRED:
                        held = self.shaping.held_until(address)
                    outcome = run.outcome(result, known.attempts if known else 0, now, dues,
                                          held)
                    groups.setdefault(outcome, []).append(address)
                try:
                    for outcome, addresses in groups.items():
                        self.writer.submit_outcomes(claim.job, addresses, outcome)
                except StoreError:
                    # the writer failed, and its run() raises that out of the
                    # worker; never into the engine, which calls this anywhere
                    # (its stop() among them).  These stay leased: taken over
                    # once the leases expire.
                    pass
                if self.on_results is not None:
                    self.on_results(results)

            self._claims[id(record)] = (claim.job, claim.destination)
            try:
                await send_claimed(
                    self.mailer, self.writer, self.in_flight, claim.job, run.spec.sender,
                    # a content object per claim: the engine this was written for puts
                    # queued items with the *same* content object in one transaction
                    # and settles it under the first item's send, so two claims of a
                    # job sharing one would get each other's results
                    run.spec.content(check=False),
                    [r.recipient() for r in claim.recipients],
                    on_results=record, verp=run.spec.verp,
                )
            finally:
                del self._claims[id(record)]
            unreported = [a for a in claimed if a not in reported]
            if self.stopping:
                unsent += unreported  # a stopping engine takes no more input
            else:
                self._settle_unreported(claim.job, unreported)
            if unsent:
                self.released += len(unsent)
                await self.store.release(self.owner, claim.job, unsent)
        finally:
            self._held -= 1
            self._leased -= len(claim)
            self._wake.set()
            self._wake = trio.Event()

    def _settle_unreported(self, job: int, addresses: list[str]) -> None:
        """Recipients the engine took as repeats of another in the claim (the
        same mailbox spelt with a different domain case) get a result too, or
        they would be claimed for ever."""
        if not addresses:
            return
        reply = synthetic_reply(451, "4.5.0",
                                "not sent: a repeat of another recipient of this job")
        self.writer.submit_outcomes(job, addresses, Outcome(
            Status.DEFERRED, reply.code, reply.enhanced, reply.text))


async def run_worker(
    url: str,
    config: MailerConfig,
    settings: WorkerSettings,
    *,
    on_results: Callable[[Sequence[Result]], None] | None = None,
    on_start: Callable[[Worker], None] | None = None,
    on_remote_action: Callable[[ShapingAction, str], None] | None = None,
) -> int:
    """One worker from start to exit status: database connections, group-commit
    writer, heartbeat, one Mailer, the claim loop; on the way out (done,
    stopped, or failed) every lease still held is given back.

    The engine's own retries are switched off (``retry_for=0``): deferrals go
    back to the store.  Its transactions lock shared rows in one order (see
    ``leases.LOCK_LEASED``), so they never deadlock each other; a failed
    heartbeat or commit raises StoreError and a lost lease
    :class:`~bulkmail.store.worker_hooks.LeaseLost` (in an exception group):
    the worker stops taking work and nothing is lost.
    """
    # heartbeat, claims, the shared limits and the shared reply rules' actions;
    # the group commits get connections of their own: an in-doubt mark (on
    # every transaction's path) never waits behind seat polls and claims
    store = await AsyncStore.open(url, connections=STORE_CONNECTIONS - WRITER_CONNECTIONS)
    try:
        commits = await AsyncStore.open(url, connections=WRITER_CONNECTIONS, generic_plans=True)
    except BaseException:
        await store.aclose()
        raise
    owner = new_owner_id()
    try:
        writer = StoreWriter(commits, owner, mark_commits=WRITER_CONNECTIONS - 1)
        in_flight = InFlight()
        shaping = SharedShaping(store, owner, on_remote=on_remote_action)
        config = replace(config, retry_for=0.0,
                         on_shaping_action=_also(config.on_shaping_action, shaping.publish))
        async with trio.open_nursery() as background:
            await background.start(writer.run)
            await background.start(keep_leases, store, owner, settings.lease)
            async with Mailer(config) as mailer:
                install_store_hooks(mailer, writer, in_flight)
                # the shaping file's caps, rates and backoff hold for all workers
                # together, and so do its reply rules' actions and warm-up caps
                shaping.attach(mailer.engine)
                await background.start(shaping.run)
                limiter = PgDestinationLimiter(store, owner, settings.lease, shaping)
                mailer.engine.destination_limiter = limiter
                background.start_soon(limiter.keep_shares)
                worker = Worker(store, writer, mailer, owner, in_flight, settings,
                                on_results=on_results, shaping=shaping)
                if on_start is not None:
                    on_start(worker)
                status = await worker.run()
            await shaping.aclose()
            await writer.aclose()
            background.cancel_scope.cancel()
        return status
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(StoreError):  # gone: the leases expire by themselves
                await store.release(owner)
            await store.aclose()
            await commits.aclose()


def _also(
    first: Callable[[ShapingAction], None] | None, then: Callable[[ShapingAction], None],
) -> Callable[[ShapingAction], None]:
    if first is None:
        return then

    def both(action: ShapingAction) -> None:
        first(action)
        then(action)

    return both
