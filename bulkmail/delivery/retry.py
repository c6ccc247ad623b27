"""When a deferred recipient is tried again: the schedule, and the one task
that keeps it."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from .job import Item


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-recipient schedule: exponential with jitter, bounded by attempts and lifetime."""

    first_delay: float = 60.0
    max_delay: float = 3600.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int = 10
    #: how long (seconds, from the first attempt) a recipient may stay deferred
    lifetime: float = 6 * 3600.0
    #: times a recipient whose end of data went unanswered (in doubt) is sent
    #: again; in doubt once more, it ends ``Status.IN_DOUBT`` instead of being
    #: sent a third time (a resumed in-doubt recipient has used one already)
    in_doubt_resends: int = 1

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Delay before attempt number ``attempts + 1`` (``attempts`` >= 1)."""
        base = min(self.max_delay, self.first_delay * self.multiplier ** max(0, attempts - 1))
        spread = base * self.jitter
        return max(0.0, base + rng.uniform(-spread, spread))

    def next_attempt(
        self, attempts: int, first_attempt: float, now: float, rng: random.Random
    ) -> float | None:
        """When to try again, or ``None`` when the recipient has expired."""
        if attempts >= self.max_attempts:
            return None
        due = now + self.delay(attempts, rng)
        if due - first_attempt > self.lifetime:
            return None
        return due


class RetryQueue:
    """Deferred recipients by due time; one task (started on demand in the
    engine's nursery) hands each back to ``dispatch`` when its time comes."""

    def __init__(self, nursery: trio.Nursery, dispatch: Callable[[Item], None]) -> None:
        self._nursery = nursery
        self._dispatch = dispatch
        self._heap: list[tuple[float, int, Item]] = []
        self._seq = 0
        self._wakeup = trio.lowlevel.ParkingLot()
        self._running = False

    def __len__(self) -> int:
        return len(self._heap)

    def waiting(self) -> Iterator[Item]:
        """The items waiting for their retry (for a scrape of the metrics)."""
        return (entry[2] for entry in self._heap)

    def schedule(self, item: Item, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, item))
        self._wakeup.unpark_all()
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._loop)

    def take(self, which: Callable[[Item], bool] | None = None) -> list[Item]:
        """Remove and return the waiting items (all, or those ``which`` selects)."""
        if which is None:
            taken = [entry[2] for entry in self._heap]
            self._heap.clear()
        else:
            taken = [entry[2] for entry in self._heap if which(entry[2])]
            self._heap = [entry for entry in self._heap if not which(entry[2])]
            heapq.heapify(self._heap)
        self._wakeup.unpark_all()
        return taken

    async def _loop(self) -> None:
        try:
            while self._heap:
                heap = self._heap  # (``take`` may have replaced it meanwhile)
                due = heap[0][0]
                if due > trio.current_time():
                    with trio.move_on_at(due):
                        await self._wakeup.park()
                    continue
                self._dispatch(heapq.heappop(heap)[2])
        finally:
            self._running = False
