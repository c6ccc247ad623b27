"""The engine's current state as a metrics scrape reads it (``observe.EngineView``).

Nothing here is counted while the run goes: queue lengths, open sessions,
recipients in flight, who waits for a retry and which destination pauses are
read from the engine's own structures at scrape time, so they cost the run
nothing between scrapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

import trio

from .health import HealthRegistry
from .pool import Pool
from .retry import RetryQueue


class EngineState:
    """Per destination site (a pool's key): queued, in flight, connections, retries, health."""

    def __init__(self, pools: Mapping[str, Pool], health: HealthRegistry,
                 retries: RetryQueue) -> None:
        self._pools = pools
        self._health = health
        self._retries = retries

    def queued(self) -> Iterator[tuple[str, int]]:
        return ((key, len(pool.queue)) for key, pool in self._pools.items())

    def in_flight(self) -> Iterator[tuple[str, int]]:
        return ((key, pool.in_flight) for key, pool in self._pools.items())

    def connections(self) -> Iterator[tuple[str, int]]:
        return ((key, pool.active_sessions) for key, pool in self._pools.items())

    def retry_waiting(self) -> Iterator[tuple[str, int]]:
        counts = Counter(item.site for item in self._retries.waiting())
        return ((key if key is not None else "none", n) for key, n in counts.items())

    def health(self) -> Iterator[tuple[str, float, int]]:
        now = trio.current_time()
        return (
            (key, max(0.0, health.pause_until - now), health.concurrency)
            for key, health in self._health.items()
        )
