"""How hard a destination may be pushed right now (Postfix destination
throttling in spirit): backoff after failures, and pacing."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class DestinationHealth:
    """Backoff state of one destination.

    Failures (421, connection errors, a run of 4xx) halve the allowed
    concurrency and pause new connections for a growing interval; successes
    win concurrency back one step at a time.  Other destinations are untouched.
    """

    max_concurrency: int
    concurrency: int = 0
    pause_until: float = 0.0
    pause: float = 0.0
    min_pause: float = 1.0
    max_pause: float = 300.0
    successes: int = 0
    recover_after: int = 10
    #: False once a server advertised PIPELINING but answered out of sequence
    pipelining: bool = True

    def __post_init__(self) -> None:
        if self.concurrency <= 0:
            self.concurrency = self.max_concurrency

    def failure(self, now: float) -> None:
        self.successes = 0
        self.concurrency = max(1, self.concurrency // 2)
        self.pause = self.min_pause if self.pause == 0 else min(self.max_pause, self.pause * 2)
        self.pause_until = now + self.pause

    def success(self) -> None:
        self.successes += 1
        if self.successes >= self.recover_after:
            self.successes = 0
            self.pause = 0.0
            if self.concurrency < self.max_concurrency:
                self.concurrency += 1

    @property
    def backing_off(self) -> bool:
        return self.concurrency < self.max_concurrency or self.pause > 0


class HealthRegistry:
    """Each destination's health: backoff and quirks outlive a pool, so a
    destination that comes back after going idle does not start from full
    speed again; a healthy one is forgotten when its pool goes idle."""

    def __init__(self, *, pipelining: bool) -> None:
        self._pipelining = pipelining
        self._health: dict[str, DestinationHealth] = {}

    def of(self, key: str, max_concurrency: int) -> DestinationHealth:
        health = self._health.get(key)
        if health is None:
            health = DestinationHealth(max_concurrency)
            health.pipelining = self._pipelining
            self._health[key] = health
        return health

    def release(self, key: str) -> None:
        """Forget ``key``'s health if it is at full health (an idle pool's):
        nothing to remember, and a long tail of domains must not leave an
        entry each.  A destination still backing off keeps its entry."""
        health = self._health.get(key)
        if health is not None and not health.backing_off \
                and health.pipelining == self._pipelining:
            del self._health[key]

    def __len__(self) -> int:
        return len(self._health)


def rate_interval(rate: float | None) -> float:
    """Seconds between message starts for a rate in messages per second."""
    if rate is None or rate <= 0 or math.isinf(rate):
        return 0.0
    return 1.0 / rate
