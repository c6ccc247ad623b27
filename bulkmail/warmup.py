"""IP warm-up: how many recipients an egress address may send a provider today.

A new IP that sends its full volume on day one gets blocked; providers
expect it to grow, e.g. 500 a day to Gmail at first, doubling daily.  The
shaping file describes each schedule::

    [[warmup]]
    destination = "*.google.com"     # a destination pattern, as in [domains]
    sources = ["192.0.2.10"]         # optional: every egress address
    daily = 500                      # or hourly = 50; or a list: [500, 1000, 2500]
    growth = 2.0                     # the cap's factor per day (default 1)
    until = 100000                   # warm-up over once the cap reaches this
    start = 2026-11-30               # day 1 (default: the first day it is used)

Windows are UTC days (or hours).  Each (egress address, pattern) pair has its
own count, kept in :class:`~bulkmail.warmup_store.WarmupCounters` (a file) so
a restart does not grant a fresh day -- or, for store workers, in PostgreSQL
(``bulkmail.store.shared_shaping``), so workers sharing an egress address
share its cap.  Shared counters cannot answer without a round trip, so the
pool awaits :meth:`WarmupGate.prepare` before it takes recipients; the
synchronous calls then only hand out what was reserved.  Recipients past the cap are not sent
and not bounced: the pool holds them, deferred with a reply naming the cap
and the next window, until that window opens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from .destination_match import pattern_matches
from .errors import synthetic_reply
from .protocol.replies import Reply

_KEYS = frozenset({"destination", "sources", "daily", "hourly", "growth", "until", "start"})
#: the count key of the address the operating system picks (no source address set)
DEFAULT_SOURCE = "default"


class Counters(Protocol):
    """Where the counts live: :class:`~bulkmail.warmup_store.WarmupCounters`
    (a file, every call atomic), or a store shared by workers (``shared``:
    its sync calls hand out what the async ones reserved ahead)."""

    shared: bool

    def first_day(self, source: str, pattern: str, today: date) -> date: ...

    def sent(self, source: str, pattern: str, window: int) -> int: ...

    def reserve(self, source: str, pattern: str, window: int, wanted: int, cap: int) -> int: ...

    def release(self, source: str, pattern: str, window: int, count: int) -> None: ...

    def close(self) -> None: ...

    async def load_first_day(self, source: str, pattern: str, today: date) -> None: ...

    async def reserve_ahead(
        self, source: str, pattern: str, window: int, wanted: int, cap: int
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class WarmupRule:
    """One schedule: a destination pattern, the egress addresses it covers,
    and a cap per window that grows by the day."""

    destination: str
    #: per "day" or per "hour" (the cap grows per day either way)
    window: str
    #: explicit caps for day 1, 2, ...; past the list the warm-up is over
    caps: tuple[int, ...] = ()
    #: else: the day-1 cap, times ``growth`` each day, over once it reaches ``until``
    first: int = 0
    growth: float = 1.0
    until: int | None = None
    #: empty: every egress address (including the default one)
    sources: tuple[str, ...] = ()
    start: date | None = None

    @property
    def seconds(self) -> int:
        return 86400 if self.window == "day" else 3600

    def cap(self, day: int) -> int | None:
        """The cap per window on day ``day`` (0 for day 1); None when warmed up."""
        if self.caps:
            return self.caps[day] if day < len(self.caps) else None
        value = self.first * self.growth ** max(0, day)
        if self.until is not None and value >= self.until:
            return None
        return int(min(value, 2**62))

    def covers(self, source: str) -> bool:
        return not self.sources or source in self.sources


def parse_warmup(table: Mapping[str, Any]) -> WarmupRule:
    """One ``[[warmup]]`` table; ValueError says what is wrong with it."""
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}")
    destination = table.get("destination")
    if not isinstance(destination, str) or not destination:
        raise ValueError(f"destination must be a pattern string, not {destination!r}")
    if ("daily" in table) == ("hourly" in table):
        raise ValueError("give exactly one of daily, hourly")
    window = "day" if "daily" in table else "hour"
    key = "daily" if window == "day" else "hourly"
    value = table[key]
    caps: tuple[int, ...] = ()
    first = 0
    if isinstance(value, list):
        if not value or not all(_whole(v, 0) for v in value):
            raise ValueError(f"{key} caps must be whole numbers >= 0, not {value!r}")
        if "growth" in table or "until" in table:
            raise ValueError("growth and until go with a single cap, not a list")
        caps = tuple(value)
    elif _whole(value, 1):
        first = value
    else:
        raise ValueError(f"{key} must be a whole number >= 1 or a list, not {value!r}")
    growth = table.get("growth", 1.0)
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not (
        1.0 <= growth < math.inf
    ):
        raise ValueError(f"growth must be a number >= 1, not {growth!r}")
    until = table.get("until")
    if until is not None and not _whole(until, 1):
        raise ValueError(f"until must be a whole number >= 1, not {until!r}")
    sources = table.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise ValueError(f"sources must be an array of addresses, not {sources!r}")
    start = table.get("start")
    if start is not None and (not isinstance(start, date) or isinstance(start, datetime)):
        raise ValueError(f"start must be a date (2026-11-30), not {start!r}")
    return WarmupRule(destination, window, caps, first, float(growth), until, tuple(sources),
                      start)


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True, slots=True)
class Grant:
    """Recipients counted against one window, to give back if never sent."""

    source: str
    pattern: str
    window: int
    count: int


class WarmupGate:
    """The warm-up caps of one destination (a pool's), over the counters.

    ``wall_clock`` gives seconds since the epoch (the engine maps its trio
    clock onto it, so a virtual clock moves the windows too).
    """

    def __init__(
        self,
        rules: tuple[WarmupRule, ...],
        counters: Counters,
        wall_clock: Callable[[], float],
    ) -> None:
        self._rules = rules
        self._counters = counters
        self._clock = wall_clock
        self._first_days: dict[tuple[str, str], date] = {}

    def _rule(self, source: str) -> WarmupRule | None:
        for rule in self._rules:
            if rule.covers(source):
                return rule
        return None

    def _state(self, source: str) -> tuple[WarmupRule, int, int | None] | None:
        """(rule, window start, cap) for ``source`` now; None if it has no schedule."""
        rule = self._rule(source)
        if rule is None:
            return None
        now = self._clock()
        today = datetime.fromtimestamp(now, UTC).date()
        key = (source, rule.destination)
        first = rule.start or self._first_days.get(key)
        if first is None:
            first = self._counters.first_day(source, rule.destination, today)
            if not self._counters.shared:  # (shared ones keep what the store said)
                self._first_days[key] = first
        window = int(now // rule.seconds) * rule.seconds
        return rule, window, rule.cap((today - first).days)

    @property
    def shared(self) -> bool:
        return self._counters.shared

    async def prepare(self, source: str | None, wanted: int) -> None:
        """Shared counters: reserve ``wanted`` from the store now, for the
        :meth:`reserve` that follows (which cannot wait).  Nothing to do with
        a file: its reserve is atomic by itself."""
        counters = self._counters
        if not counters.shared:
            return
        key = source or DEFAULT_SOURCE
        rule = self._rule(key)
        if rule is None:
            return
        if rule.start is None:
            today = datetime.fromtimestamp(self._clock(), UTC).date()
            await counters.load_first_day(key, rule.destination, today)
        state = self._state(key)
        if state is not None and state[2] is not None:
            await counters.reserve_ahead(key, rule.destination, state[1], wanted, state[2])

    def reserve(self, source: str | None, wanted: int) -> tuple[int, Grant | None]:
        """Count up to ``wanted`` recipients from ``source``: (granted, grant to
        give back what is not sent; None when nothing is capped)."""
        key = source or DEFAULT_SOURCE
        state = self._state(key)
        if state is None:
            return wanted, None
        rule, window, cap = state
        if cap is None:
            return wanted, None
        granted = self._counters.reserve(key, rule.destination, window, wanted, cap)
        return granted, Grant(key, rule.destination, window, granted)

    def release(self, grant: Grant, count: int) -> None:
        if count > 0:
            self._counters.release(grant.source, grant.pattern, grant.window, count)

    def capped(self, source: str | None) -> tuple[float, Reply] | None:
        """When ``source`` has no cap left: (seconds until its next window, the
        reply telling why its recipients wait); else None."""
        key = source or DEFAULT_SOURCE
        state = self._state(key)
        if state is None:
            return None
        rule, window, cap = state
        if cap is None or self._counters.sent(key, rule.destination, window) < cap:
            return None
        opens = window + rule.seconds
        when = datetime.fromtimestamp(opens, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reply = synthetic_reply(
            451, "4.7.0",
            f"warm-up cap for {rule.destination} from {key} reached ({cap}/{rule.window});"
            f" next window {when}",
        )
        return max(0.0, opens - self._clock()), reply


def gate_for(
    rules: Iterable[WarmupRule],
    names: Iterable[str],
    counters: Counters,
    wall_clock: Callable[[], float],
) -> WarmupGate | None:
    """The gate for a destination known by ``names``; None when no schedule covers it
    (then its pool does no warm-up bookkeeping at all)."""
    names = list(names)
    matching = tuple(rule for rule in rules if pattern_matches(rule.destination, names))
    return WarmupGate(matching, counters, wall_clock) if matching else None
