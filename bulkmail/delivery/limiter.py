"""Per-destination limits shared beyond one process: the seam a pool calls.

A pool enforces its destination's connection cap, rate and backoff itself
(``health.py``, its own pacing): that is the single-process behaviour, and
there the limiter is ``None`` -- not one call, not one await more.  Workers
sharing a job across processes and machines install a
:class:`DestinationLimiter` on the engine; the pool then also

* holds a *seat* of the destination for each connection it opens (the cap
  holds for all workers together),
* takes rate *tokens* before each message it paces (the rate holds in sum),
* asks whether the destination is *paused* before connecting, and pauses it
  for everyone after a 421 or a failed connection,
* ends a session between transactions while the process holds more than its
  fair share of seats that other processes want (``surplus``).

The PostgreSQL implementation is ``bulkmail.store.limiter``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import trio

from ..protocol.replies import Reply

__all__ = ["DestinationLimiter", "Seat", "SharedDestination", "burst_for"]

#: a held connection seat, as the limiter hands it out (opaque to the pool)
Seat = object
#: longest wait for a seat of a paused destination before looking again
PAUSE_RECHECK = 1.0


class DestinationLimiter(Protocol):
    async def acquire(self, destination: str, cap: int) -> Seat | None:
        """A connection seat of ``destination`` (at most ``cap`` held at once in
        all), or ``None`` when none is free now or the destination is paused.
        Never waits for a seat: the pool decides how long to wait."""

    async def release(self, seat: Seat) -> None:
        """Give ``seat`` back."""

    async def take(self, destination: str, rate: float, burst: int,
                   wanted: int) -> tuple[int, float]:
        """Up to ``wanted`` messages' worth of ``destination``'s ``rate`` (per
        second, ``burst`` at once): (granted, seconds until the next conforms)."""

    def surplus(self, destination: str) -> int:
        """Seats of ``destination`` held beyond this process's fair share (other
        processes want them): that many sessions should end and give theirs back."""

    async def paused(self, destination: str) -> float:
        """Seconds ``destination`` stays paused (0: not paused)."""

    async def pause(self, destination: str, seconds: float, reply: Reply | None) -> None:
        """Pause ``destination`` for every sharer for ``seconds`` (a longer pause
        in force stays), because of ``reply`` (a 421, a failed connection)."""


def burst_for(rate: float) -> int:
    """The shared bucket's size: a quarter of a second's worth (at least one).

    Several tokens per database round trip at high rates, and never more than
    a quarter second ahead of the rate.  A tenth was measured to lose ~4% of
    the rate with three workers: a bucket that small overflows whenever every
    worker is busy elsewhere (a commit, a round trip) for three tokens' time.
    """
    return max(1, math.ceil(rate / 4))


class SharedDestination:
    """One pool's use of a :class:`DestinationLimiter` for its destination:
    waiting for a seat, taking rate tokens ahead, pausing for everyone."""

    def __init__(self, limiter: DestinationLimiter, key: str) -> None:
        self.limiter = limiter
        self.key = key
        self.tokens = 0  #: rate tokens taken, not yet spent
        self.seats_short = False  #: the last seat wanted was not free at once

    async def seat(self, cap: int, wanted: Callable[[], bool],
                   another_waits: Callable[[], bool]) -> Seat | None:
        """Wait for one of the destination's ``cap`` seats (polling: a seat frees
        when another process closes a connection); ``None`` once ``wanted()``
        is false, or when ``another_waits()`` -- one poller per pool, not one
        per task (three workers' tasks polled ~1000 times a second)."""
        poll = 0.02
        first = True
        while wanted():
            seat = await self.limiter.acquire(self.key, cap)
            if seat is not None:
                if first:
                    self.seats_short = False
                return seat
            first = False
            self.seats_short = True
            if another_waits():
                return None
            paused = await self.limiter.paused(self.key)
            # a long pause (another worker's reply rule suspended it) is looked
            # at again each second: once this process has read the action, its
            # pool holds the queue (``Engine.apply_shared``) and stops wanting
            await trio.sleep(min(max(paused, poll), PAUSE_RECHECK))
            poll = min(0.2, poll * 2)
        return None

    def surplus(self) -> bool:
        """Whether a session should end now and give its seat back: this process
        holds more than its share and others wait (checked between transactions)."""
        return self.limiter.surplus(self.key) > 0

    async def release(self, seat: Seat) -> None:
        with trio.CancelScope(shield=True):
            await self.limiter.release(seat)

    async def take(self, rate: float, n: int, queued: int) -> None:
        """Wait until ``n`` messages conform to the shared ``rate``."""
        burst = burst_for(rate)
        while self.tokens < n:
            # ahead only for work queued here: a token taken and never spent is
            # a message the destination could have had from another worker
            ahead = min(burst, n + queued)
            granted, wait = await self.limiter.take(
                self.key, rate, burst, max(n - self.tokens, ahead))
            self.tokens += granted
            if self.tokens < n:
                await trio.sleep(max(wait, 0.001))
        self.tokens -= n

    async def pause(self, seconds: float, reply: Reply | None) -> None:
        """This process backs off for ``seconds``: so does every other one."""
        if seconds > 0:
            with trio.CancelScope(shield=True):
                await self.limiter.pause(self.key, seconds, reply)
