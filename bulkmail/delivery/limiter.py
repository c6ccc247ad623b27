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
  for everyone after a 421 or a failed connection.

The PostgreSQL implementation is ``bulkmail.store.limiter``.
"""

from __future__ import annotations

import math
from typing import Protocol

from ..protocol.replies import Reply

__all__ = ["DestinationLimiter", "Seat", "burst_for"]

#: a held connection seat, as the limiter hands it out (opaque to the pool)
Seat = object


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
