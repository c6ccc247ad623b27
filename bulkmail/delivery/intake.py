"""Taking recipients in: one loop for iterables and async iterables, the
per-recipient admission fast path, dedupe, and back-pressure.

This is the hot path of a large send: every recipient passes ``_admit``
once, so it is written to do as little as possible per recipient (facts about
a domain are learnt once per domain, not per address).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from contextlib import aclosing

import trio

from ..message import Recipient
from ..protocol import commands
from ..protocol.errors import InvalidAddress
from ..routing import domain_of
from .job import Item, Job

Recipients = Iterable[Recipient | str] | AsyncIterable[Recipient | str]

#: domains whose intake facts are remembered; a list of mostly unique domains
#: starts over instead of growing without bound
MAX_INTAKE_DOMAINS = 100_000
#: recipients admitted between two checkpoints (other tasks get to run).
#: Pool workers take what is queued when they run, so this is also how much
#: work a session finds per scheduling round: at 256 a newsletter of 50
#: recipients a transaction left ~5 transactions per round for 10 sessions,
#: and each wrote 2-5 transactions at a time (2,975 socket writes for 8,000
#: transactions against 320 at 2fe5c48, whose sessions waited to fill a window
#: of 32).  At 2048 (a few ms of admission): client CPU against 2fe5c48 +18% ->
#: +4% (8,000 x 50 recipients, 6 alternating rounds; 1024: +7%, 4096: about
#: the same as 2048); with ``--max-in-doubt 0``, 400 writes and level.
CHECKPOINT_EVERY = 2048
#: ... but the clock is looked at every CLOCK_EVERY admissions, and a run
#: longer than MAX_RUN seconds yields early: a slow source (``--recipients -``
#: fed line by line, read with blocking calls) must not hold sessions, DNS and
#: Ctrl-C for 2,048 of its lines -- no longer than for 256 of them, as before
CLOCK_EVERY = 256
MAX_RUN = 0.02
#: recipients read ahead of admission while ``max_pending`` are in memory:
#: their domains are resolved meanwhile, so DNS overlaps delivery
LOOKAHEAD = 20_000


class Intake:
    """Admits recipients into jobs, holding at most ``max_pending`` in memory,
    and reading up to ``lookahead`` more whose domains ``prefetch`` resolves
    ahead of their admission."""

    def __init__(
        self,
        max_pending: int,
        *,
        dispatch: Callable[[Item, str], None],
        invalid: Callable[[Item, str], None],
        prefetch: Callable[[str], object] | None = None,
        lookahead: int = LOOKAHEAD,
    ) -> None:
        self.max_pending = max_pending
        self.lookahead = lookahead if prefetch is not None else 0
        self._dispatch = dispatch
        self._invalid = invalid
        self._prefetch = prefetch
        # recipients in memory; a producer at the cap waits for a refill mark,
        # not for each single slot (one wakeup per recipient cost ~15% at 10k/s)
        self._in_memory = 0
        self._resume_at = max_pending - max(1, max_pending // 8)
        self._room = trio.lowlevel.ParkingLot()
        self._domains: dict[str, tuple[str, str | None]] = {}
        #: the clock when the current chunk of recipients is taken in (read once
        #: per CHECKPOINT_EVERY recipients, not per recipient): ``Item.queued_at``
        self.now = 0.0

    def release(self, n: int = 1) -> None:
        """``n`` recipients have their results: room for more."""
        self._in_memory -= n
        if self._in_memory <= self._resume_at and self._room:  # (the int first: __bool__ is Python)
            self._room.unpark_all()

    async def feed(self, job: Job, recipients: Recipients) -> None:
        """Admit every recipient (waiting while ``max_pending`` are in memory),
        until the source ends or the job closes."""
        admit = self._admit
        admitted = 0
        # read but not yet admitted (at most ``lookahead``): when the job
        # closes they are admitted anyway, so each ends deferred with a result
        ahead: deque[Recipient | str] = deque()
        # when intake last let other tasks run: not reset per chunk, since an
        # async source's next recipient need not yield to trio (at worst, one
        # that did costs an early checkpoint)
        yielded_at = trio.current_time()
        try:
            async with aclosing(_chunks(recipients)) as chunks:
                async for chunk in chunks:
                    self.now = trio.current_time()  # an item's queued_at, per chunk
                    budget = 0  # (nothing carries over an await: others may admit)
                    for recipient in chunk:
                        if budget:  # the fast path: no coroutine, no test of room
                            budget -= 1
                            if job.closed:
                                return
                            admit(job, recipient)
                            continue
                        if job.closed:
                            return
                        if not ahead and self._in_memory < self.max_pending:
                            admit(job, recipient)
                        elif not self.lookahead:
                            await self._wait_for_room()
                            self.now = yielded_at = trio.current_time()
                            admit(job, recipient)
                        else:
                            ahead.append(recipient)
                            self._look_ahead(recipient)
                            self._admit_ahead(job, ahead)
                            while len(ahead) >= self.lookahead and not job.closed:
                                await self._wait_for_room()
                                self.now = yielded_at = trio.current_time()
                                self._admit_ahead(job, ahead)
                        admitted += 1
                        if admitted % CLOCK_EVERY == 0:
                            self.now = trio.current_time()
                            if (
                                admitted % CHECKPOINT_EVERY == 0
                                or self.now - yielded_at >= MAX_RUN
                            ):
                                await trio.lowlevel.checkpoint()
                                self.now = yielded_at = trio.current_time()
                        if not ahead:
                            # the next ones may skip the room and checkpoint
                            # tests (12 bytecodes a recipient, ~1% of scenario
                            # d): an admission adds at most one to _in_memory
                            budget = max(0, min(
                                self.max_pending - self._in_memory,
                                CLOCK_EVERY - 1 - admitted % CLOCK_EVERY,
                            ))
                            admitted += budget  # counted ahead: an early end only
                            # moves the next checkpoint
                    # ... or would, every chunk: an async source's chunk is one
                    # recipient, and a checkpoint after each was a scheduler pass each
                    admitted -= budget
            while ahead and not job.closed:
                await self._wait_for_room()
                self.now = trio.current_time()
                self._admit_ahead(job, ahead)
        finally:
            while ahead:  # the job closed: they end deferred (it takes nothing new)
                admit(job, ahead.popleft())

    def _admit_ahead(self, job: Job, ahead: deque[Recipient | str]) -> None:
        while ahead and self._in_memory < self.max_pending:
            self._admit(job, ahead.popleft())

    def _look_ahead(self, recipient: Recipient | str) -> None:
        """Start resolving a recipient's domain before it is admitted."""
        address = recipient if isinstance(recipient, str) else recipient.address
        local, at, domain_part = address.strip().rpartition("@")
        if at and local:
            plain = (self._domains.get(domain_part) or self._learn_domain(domain_part))[1]
            if plain is not None and self._prefetch is not None:
                self._prefetch(plain)

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
            facts = self._domains.get(domain_part) or self._learn_domain(domain_part)
            lowered, plain_domain = facts
        else:  # no domain at all: validation below refuses it
            lowered, plain_domain = domain_part.lower(), None
        if not job.first_sighting(
            address if at and lowered == domain_part else f"{local}@{lowered}"
        ):
            return
        self._in_memory += 1
        job.outstanding += 1
        flagged = recipient.possible_duplicate
        # positional: faster; a resumed in-doubt recipient has been in doubt once
        item = Item(
            recipient, job, 0, 0, None, flagged, None, None, 1 if flagged else 0, self.now
        )
        presettle = job.options.presettle
        if presettle is not None:
            decided = presettle(recipient)
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
                self._invalid(item, reason)
                return
        self._dispatch(item, domain)

    def _learn_domain(self, domain_part: str) -> tuple[str, str | None]:
        """What intake needs of a domain, computed once per domain: its lower
        case, and its routing key if it is a plain ASCII one (else ``None``:
        every address there takes the full validation)."""
        known = self._domains
        if len(known) >= MAX_INTAKE_DOMAINS:
            known.clear()
        lowered = domain_part.lower()
        if lowered == domain_part:
            lowered = domain_part  # one string, not an equal copy, per domain
        plain = lowered.rstrip(".") if commands.is_plain_domain(domain_part) else None
        known[domain_part] = facts = (lowered, plain)  # domain_of() for a plain domain
        return facts


async def _chunks(
    recipients: Recipients,
) -> AsyncGenerator[Iterable[Recipient | str], None]:
    """The one shape ``feed`` loops over: a plain iterable is one chunk (no
    await per recipient on the fast path), an async one a chunk per recipient."""
    if isinstance(recipients, AsyncIterable):
        async for recipient in recipients:
            yield (recipient,)
    else:
        yield recipients
