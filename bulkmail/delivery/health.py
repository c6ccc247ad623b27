"""How hard a destination may be pushed right now (Postfix destination
throttling in spirit): backoff after failures, pacing, and the actions
reply rules took (suspensions, lowered caps).

An action is data (:class:`ShapingAction`) applied by one method,
:meth:`DestinationHealth.apply`: the engine applies the ones its own replies
trigger, and store workers apply the ones other workers recorded the same
way (:meth:`HealthRegistry.apply_shared`; ``bulkmail.store.shared_shaping``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..protocol.replies import Reply


def action_words(kind: str, source: str | None, connections: int | None,
                 rate: float | None) -> str:
    """What a reply rule's action does, in the words of a log line."""
    what = kind
    if kind == "suspend-source":
        what += f" {source or 'default source'}"
    if connections is not None:
        what += f" connections={connections}"
    if rate is not None:
        what += f" rate={rate:g}/s"
    return what


@dataclass(frozen=True, slots=True)
class ShapingAction:
    """What a reply rule did to a destination, and why (one log line each)."""

    #: "suspend", "suspend-source", "limit" or "bounce-rest"
    kind: str
    #: the destination's key (``mx:mx.example.net``, ``relay:host:port``)
    destination: str
    #: the reply that triggered it
    reply: Reply
    #: the rule's name in the shaping file
    rule: str
    #: seconds it lasts (0 for bounce-rest, which lasts for the job)
    duration: float
    #: when it ends: on the engine's (trio) clock, and as seconds since the epoch
    until: float
    expires_at: float
    #: suspend-source: the egress address suspended (None: the default one)
    source: str | None = None
    #: limit: the connection cap and rate (messages per second) meanwhile
    connections: int | None = None
    rate: float | None = None
    #: the job (``delivery.job.Job``) whose reply it was, if known: a store
    #: worker finds the stored job of a bounce-rest by it
    job: object = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """One log line: action, destination, how long, the triggering reply."""
        what = action_words(self.kind, self.source, self.connections, self.rate)
        lasting = f" for {self.duration:g}s" if self.duration else ""
        return (f"shaping: {what} {self.destination}{lasting} ({self.rule}) after"
                f" \"{self.reply}\"")


@dataclass(slots=True)
class _Hold:
    """A suspension or limit in force until ``until`` (trio clock)."""

    until: float
    reply: Reply


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
    #: reply rules' actions in force (see :meth:`apply`); empty in the common case
    suspended: _Hold | None = None
    sources_suspended: dict[str | None, _Hold] = field(default_factory=dict)
    limited: _Hold | None = None
    limit_connections: int | None = None
    limit_rate: float | None = None

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

    @property
    def holds_actions(self) -> bool:
        """A reply rule's suspension or limit is (or was, until looked at) in force."""
        return bool(self.suspended or self.sources_suspended or self.limited)

    # -- reply rules' actions ------------------------------------------------

    def apply(self, action: ShapingAction) -> bool:
        """Put ``action`` in force (a longer one already in force is kept);
        True if it was not in force before (the start worth logging)."""
        hold = _Hold(action.until, action.reply)
        now = action.until - action.duration
        if action.kind == "suspend":
            current = self.suspension(now)
            if current is None or current.until < action.until:
                self.suspended = hold
        elif action.kind == "suspend-source":
            current = self.source_suspension(action.source, now)
            if current is None or current.until < action.until:
                self.sources_suspended[action.source] = hold
        elif action.kind == "limit":
            current = self.limited if self.limited and self.limited.until > now else None
            self.limited = hold
            self.limit_connections = action.connections
            self.limit_rate = action.rate
        else:
            raise ValueError(f"not a health action: {action.kind!r}")
        return current is None

    def suspension(self, now: float) -> _Hold | None:
        """The destination-wide suspension in force, if any."""
        hold = self.suspended
        if hold is not None and hold.until <= now:
            self.suspended = hold = None
        return hold

    def source_suspension(self, source: str | None, now: float) -> _Hold | None:
        hold = self.sources_suspended.get(source)
        if hold is not None and hold.until <= now:
            del self.sources_suspended[source]
            hold = None
        return hold

    def connection_cap(self, cap: int, now: float) -> int:
        """Sessions allowed now: ``cap`` (the pool's), the backoff's, and a
        ``limit`` action's while it lasts."""
        allowed = min(cap, self.concurrency)
        limited = self.limited
        if limited is not None:
            if limited.until <= now:
                self.limited = None
            elif self.limit_connections is not None:
                allowed = min(allowed, self.limit_connections)
        return allowed

    def interval(self, base: float, now: float) -> float:
        """Seconds between message starts: ``base`` (the pool's), or longer
        while a ``limit`` action's rate holds."""
        limited = self.limited
        if limited is None or self.limit_rate is None:
            return base
        if limited.until <= now:
            self.limited = None
            return base
        return max(base, rate_interval(self.limit_rate))


class HealthRegistry:
    """Each destination's health: backoff and quirks outlive a pool, so a
    destination that comes back after going idle does not start from full
    speed again; a healthy one is forgotten when its pool goes idle."""

    def __init__(self, *, pipelining: bool) -> None:
        self._pipelining = pipelining
        self._health: dict[str, DestinationHealth] = {}
        #: other workers' actions for destinations without a health here yet
        self._shared: dict[str, list[ShapingAction]] = {}

    def items(self) -> Iterator[tuple[str, DestinationHealth]]:
        """Every destination's health, by key (for a scrape of the metrics)."""
        return iter(self._health.items())

    def of(self, key: str, max_concurrency: int) -> DestinationHealth:
        health = self._health.get(key)
        if health is None:
            health = DestinationHealth(max_concurrency)
            health.pipelining = self._pipelining
            self._health[key] = health
            for action in self._shared.pop(key, ()):
                health.apply(action)
        return health

    def apply_shared(self, action: ShapingAction, now: float) -> bool:
        """Another worker's action: in force here now if the destination has a
        health, else from when it gets one (its pool opens).  True if it was
        not in force before."""
        health = self._health.get(action.destination)
        if health is not None:
            return health.apply(action)
        waiting = [a for a in self._shared.get(action.destination, ()) if a.until > now]
        self._shared[action.destination] = [*waiting, action]
        if len(self._shared) > 10_000:  # bounded: drop those over
            self._shared = {k: v for k, v in self._shared.items()
                            if any(a.until > now for a in v)}
        return True

    def release(self, key: str) -> None:
        """Forget ``key``'s health if it is at full health (an idle pool's):
        nothing to remember, and a long tail of domains must not leave an
        entry each.  A destination still backing off keeps its entry."""
        health = self._health.get(key)
        # (a reply rule's suspension must outlive the idle pool: forgetting it
        # let the next recipient there start the action -- and its log line -- again)
        if health is not None and not health.backing_off and not health.holds_actions \
                and health.pipelining == self._pipelining:
            del self._health[key]

    def __len__(self) -> int:
        return len(self._health)


def rate_interval(rate: float | None) -> float:
    """Seconds between message starts for a rate in messages per second."""
    if rate is None or rate <= 0 or math.isinf(rate):
        return 0.0
    return 1.0 / rate
