"""A store worker's share of the reply rules and warm-up caps.

What makes one worker's ``421 4.7.0 [TSS04]`` stop every worker, and one
warm-up cap hold for all of them together:

* **Publishing**: each action the worker's engine takes (``on_shaping_action``)
  is recorded in the store with its reply (``store/shaping.py``); a
  ``suspend`` also pauses the destination's seats at once.  The pool gives a
  connection seat back only after the actions its session triggered are
  recorded (``PgDestinationLimiter.release`` awaits :meth:`flush`), so no
  other worker connects in between.
* **Obeying**: every ``poll`` seconds the worker reads the actions in force
  and applies the other workers' to its engine (``Engine.apply_shared``):
  a suspended destination's queue is held, sessions already open there end
  after their transaction, a lowered cap or rate applies -- also to the
  shared seats and tokens, so it holds in sum.
* **Holds**: a recipient held back (a suspension, a warm-up cap) goes back to
  the store with its next attempt when the hold ends (:meth:`held_until`),
  not after the retry schedule's delay, and without an attempt spent.
* **Warm-up**: :class:`SharedWarmupCounters` reserves in the store before a
  transaction and hands out only what was reserved.

Times in the store are the server's; a worker converts "seconds left" to its
own clock, so workers' clocks need not agree.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import date

import trio

from ..delivery.engine import Engine
from ..delivery.health import ShapingAction
from ..protocol.replies import Reply
from .aio import AsyncStore
from .shaping import (
    ActionRecord,
    actions_in_force,
    bounce_rest,
    first_day,
    record_action,
    release_warmup,
    reserve_warmup,
    warmup_counts,
)
from .store import PgStore

__all__ = ["POLL", "SharedShaping", "SharedWarmupCounters"]

#: seconds between two reads of the actions in force
POLL = 0.5
#: warm-up windows read back at start (the longest window is a day)
_RECENT = 2 * 86400

_Key = tuple[str, str, int]


class SharedWarmupCounters:
    """Warm-up counts in PostgreSQL behind the synchronous counters interface.

    :meth:`reserve_ahead` (awaited by the pool) reserves in the store;
    :meth:`reserve` hands out only that.  A worker that dies holding a
    reservation loses it for the window: the cap errs on the side of fewer.
    """

    shared = True

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._first: dict[tuple[str, str], date] = {}
        #: each window's count in the store, as last seen
        self._counts: dict[_Key, int] = {}
        #: reserved in the store, not handed out yet
        self._ahead: dict[_Key, int] = {}
        #: handed out and never sent: given back by the next :meth:`flush`
        self._unsent: dict[_Key, int] = {}
        self.used = False

    def first_day(self, source: str, pattern: str, today: date) -> date:
        return self._first.get((source, pattern), today)

    def sent(self, source: str, pattern: str, window: int) -> int:
        key = (source, pattern, window)
        return self._counts.get(key, 0) - self._ahead.get(key, 0)

    def reserve(self, source: str, pattern: str, window: int, wanted: int, cap: int) -> int:
        key = (source, pattern, window)
        ahead = self._ahead.get(key, 0)
        granted = min(wanted, ahead)
        if granted:
            self._ahead[key] = ahead - granted
        return granted

    def release(self, source: str, pattern: str, window: int, count: int) -> None:
        key = (source, pattern, window)
        self._unsent[key] = self._unsent.get(key, 0) + count

    def close(self) -> None:
        """(The worker gives reservations back in :meth:`aclose`.)"""

    async def load_first_day(self, source: str, pattern: str, today: date) -> None:
        if (source, pattern) not in self._first:
            self.used = True
            self._first[(source, pattern)] = await self._store.call(
                lambda s: first_day(s.db, source, pattern, today))

    async def reserve_ahead(
        self, source: str, pattern: str, window: int, wanted: int, cap: int
    ) -> None:
        self.used = True
        key = (source, pattern, window)
        need = wanted - self._ahead.get(key, 0)
        if need <= 0:
            return
        granted, count = await self._store.call(
            lambda s: reserve_warmup(s.db, source, pattern, window, need, cap))
        self._ahead[key] = self._ahead.get(key, 0) + granted
        self._counts[key] = count

    async def refresh(self, now: float) -> None:
        """Read every schedule's day 1 and the recent counts back (at start,
        then while schedules are in use)."""
        await self.flush()
        starts, counts = await self._store.call(
            lambda s: warmup_counts(s.db, int(now) - _RECENT))
        self._first.update(starts)
        self._counts = counts

    async def flush(self, *, everything: bool = False) -> None:
        """Give back what was handed out and not sent (and, ``everything``,
        what is still reserved: the worker is leaving)."""
        back = self._unsent
        self._unsent = {}
        if everything:
            for key, n in self._ahead.items():
                back[key] = back.get(key, 0) + n
            self._ahead = {}
        for (source, pattern, window), n in back.items():
            if n > 0:
                await self._store.call(
                    functools.partial(_release, key=(source, pattern, window), count=n))


class SharedShaping:
    """One worker's link between its engine and the store's actions and counters."""

    def __init__(self, store: AsyncStore, worker: str, *, poll: float = POLL,
                 on_remote: Callable[[ShapingAction, str], None] | None = None) -> None:
        self.store = store
        self.worker = worker
        self.poll = poll
        self.warmup = SharedWarmupCounters(store)
        #: told of each action of another worker this one obeys (a log line)
        self.on_remote = on_remote
        self._engine: Engine | None = None
        #: the stored job and claim destination of an engine job (the worker's)
        self.claim_of: Callable[[object], tuple[int, str] | None] = lambda job: None
        self._pending: list[tuple[ShapingAction, tuple[int, str] | None]] = []
        self._lock = trio.Lock()
        self._applied: set[int] = set()
        #: limit actions in force: destination -> (unix time, connections, rate)
        self._limits: dict[str, tuple[float, int | None, float | None]] = {}
        #: address -> unix time its hold ends (read once, by :meth:`held_until`)
        self._holds: dict[str, float] = {}
        #: bounce-rest actions: (stored job, claim destination) -> the bounce's reply
        self._closed: dict[tuple[int, str], Reply] = {}

    def attach(self, engine: Engine) -> None:
        """Share ``engine``'s warm-up counters and hear of its holds."""
        self._engine = engine
        engine.shared_warmup = self.warmup
        engine.on_hold = self._note_hold

    # -- this worker's actions -------------------------------------------------

    def publish(self, action: ShapingAction) -> None:
        """``on_shaping_action``: record ``action`` for every worker (soon:
        by the poller, or before the seat of its session is given back)."""
        self._pending.append((action, self.claim_of(action.job)))
        if action.kind == "limit":
            self._limit(action.destination, time.time() + action.duration,
                        action.connections, action.rate)

    async def flush(self) -> None:
        """Record every action published so far (shielded: an action heard is
        never lost to a cancellation)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                while self._pending:
                    action, claim = self._pending[0]
                    record = await self.store.call(functools.partial(
                        _record, action=action, claim=claim, worker=self.worker))
                    self._applied.add(record.id)
                    self._pending.pop(0)
                    self._note_closed(record)

    # -- the other workers' ------------------------------------------------------

    async def sync(self) -> None:
        """Record ours, then obey the other workers' actions in force."""
        await self.flush()
        records = await self.store.call(lambda s: actions_in_force(s.db))
        for record in records:
            self._note_closed(record)
            if record.id in self._applied:
                continue
            self._applied.add(record.id)
            if record.worker != self.worker and record.kind != "bounce-rest":
                self._obey(record)
        self._applied &= {record.id for record in records}  # (bounded: those in force)
        if self.warmup.used:
            await self.warmup.refresh(time.time())

    def _obey(self, record: ActionRecord) -> None:
        left = max(0.0, record.left or 0.0)
        action = ShapingAction(
            record.kind, record.destination, _reply(record), record.rule, left,
            trio.current_time() + left, time.time() + left, record.source,
            record.connections, record.rate,
        )
        if record.kind == "limit":
            self._limit(record.destination, time.time() + left, record.connections,
                        record.rate)
        if self._engine is not None:
            self._engine.apply_shared(action)
        if self.on_remote is not None:
            self.on_remote(action, record.worker)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Read what is in force (warm-up counts too) before the worker starts,
        then keep in step every ``poll`` seconds."""
        await self.warmup.refresh(time.time())
        await self.sync()
        task_status.started()
        while True:
            await trio.sleep(self.poll)
            await self.sync()

    async def aclose(self) -> None:
        """Record what is left to record, give unused warm-up reservations back."""
        await self.flush()
        with trio.CancelScope(shield=True):
            await self.warmup.flush(everything=True)

    # -- what the pool and the worker ask ----------------------------------------

    def cap(self, destination: str, cap: int) -> int:
        """The shared seat cap: a ``limit`` action's while it lasts."""
        limit = self._limits.get(destination)
        if limit is None or limit[1] is None:
            return cap
        if limit[0] <= time.time():
            del self._limits[destination]
            return cap
        return min(cap, limit[1])

    def rate(self, destination: str, rate: float) -> float:
        """The shared rate: a ``limit`` action's while it lasts."""
        limit = self._limits.get(destination)
        if limit is None or limit[2] is None or limit[0] <= time.time():
            return rate
        return min(rate, limit[2])

    def closed(self, job: int, destination: str) -> Reply | None:
        """The bounce for recipients of ``job`` at ``destination`` (a claim's),
        if a bounce-rest action closed it; None to send them."""
        return self._closed.get((job, destination)) if self._closed else None

    def _note_closed(self, record: ActionRecord) -> None:
        if record.kind == "bounce-rest" and record.job is not None and record.claim:
            self._closed[(record.job, record.claim)] = Reply(
                550, (f"5.7.1 {bounce_text(record.destination, _reply(record), record.rule)}",),
                "5.7.1")

    def held_until(self, address: str) -> float | None:
        """When the hold that deferred ``address`` ends (unix time), once."""
        return self._holds.pop(address, None)

    def _note_hold(self, address: str, delay: float) -> None:
        self._holds[address] = time.time() + delay
        if len(self._holds) > 100_000:  # bounded: never read is never needed
            self._holds.clear()

    def _limit(self, destination: str, until: float, connections: int | None,
               rate: float | None) -> None:
        self._limits[destination] = (until, connections, rate)


def _record(s: PgStore, *, action: ShapingAction, claim: tuple[int, str] | None,
            worker: str) -> ActionRecord:
    """Log ``action``; a bounce-rest also bounces the rest of its stored job
    there (the claim's destination) that no worker holds -- what other
    workers hold now is still sent."""
    reply = action.reply
    record = record_action(
        s.db, destination=action.destination, kind=action.kind, source=action.source,
        duration=action.duration, connections=action.connections, rate=action.rate,
        rule=action.rule, code=reply.code, enhanced=reply.enhanced, reply=reply.text,
        job=None if claim is None else claim[0], worker=worker,
        claim=claim[1] if claim is not None and action.kind == "bounce-rest" else None,
    )
    if action.kind == "bounce-rest" and claim is not None:
        bounce_rest(s.db, claim[0], claim[1],
                    bounce_text(action.destination, reply, action.rule))
    return record


def bounce_text(destination: str, reply: Reply, rule: str) -> str:
    """What the rest of a job bounced by a bounce-rest action is told (as the engine does)."""
    return (f"not sent: {destination} answered \"{reply}\" and shaping rule {rule}"
            " bounces the rest of this job there")


def _release(s: PgStore, *, key: _Key, count: int) -> None:
    release_warmup(s.db, *key, count)


def _reply(record: ActionRecord) -> Reply:
    lines = record.reply.split("\n")
    if record.enhanced:
        lines[0] = f"{record.enhanced} {lines[0]}"
    return Reply(record.code, tuple(lines), record.enhanced)
