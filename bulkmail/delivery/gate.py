"""What a destination's reply rules and warm-up caps allow its pool right now.

The pool asks, before each session, which egress address may open it (a
suspended destination or source, or a source past its warm-up cap, sends
nothing: the pool then hands its queue over to wait); during a session,
whether it may go on (a rule may have suspended it or lowered the cap) and
how many of the recipients it took the warm-up cap lets it send.  The state
itself lives in :class:`~bulkmail.delivery.health.DestinationHealth`, shared
by every pool and job using the destination; this module only reads it.
No I/O besides the warm-up counters (awaited only when a store shares them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import trio

from ..protocol.replies import Reply
from ..reactions import ReactionRule, first_match
from ..warmup import Grant, WarmupGate
from .connector import ROUND_ROBIN, SourceChoice
from .health import DestinationHealth


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing may be sent for ``delay`` seconds; ``reply`` says why."""

    delay: float
    reply: Reply


class PoolGate:
    """One pool's view of its destination's reply rules and warm-up caps."""

    __slots__ = ("_choosing", "_sources", "_turn", "cap", "health", "reactions", "warmup")

    def __init__(
        self,
        health: DestinationHealth,
        cap: int,
        sources: tuple[str, ...],
        reactions: tuple[ReactionRule, ...],
        warmup: WarmupGate | None,
    ) -> None:
        self.health = health
        self.cap = cap
        #: reply rules that can fire here (none: replies are never matched)
        self.reactions = reactions
        self.warmup = warmup
        self._sources: tuple[str | None, ...] = sources or (None,)
        self._turn = 0
        #: the gate picks each session's source (else the connector goes round
        #: robin): a warm-up cap or a source's suspension may skip one
        self._choosing = warmup is not None or any(
            rule.action == "suspend-source" for rule in reactions
        )

    def source(self, now: float) -> str | SourceChoice | Wait | None:
        """The egress address for the next session (ROUND_ROBIN: the
        connector's choice), or how long nothing may go: the destination or
        every source is suspended, or every source used up its warm-up cap."""
        health = self.health
        hold = health.suspension(now)
        if hold is not None:
            return Wait(hold.until - now, hold.reply)
        if not self._choosing:
            return ROUND_ROBIN
        waits: list[Wait] = []
        sources = self._sources
        for turn in range(len(sources)):
            source = sources[(self._turn + turn) % len(sources)]
            hold = health.source_suspension(source, now)
            if hold is not None:
                waits.append(Wait(hold.until - now, hold.reply))
                continue
            capped = self.warmup.capped(source) if self.warmup is not None else None
            if capped is not None:
                waits.append(Wait(*capped))
                continue
            self._turn = (self._turn + turn + 1) % len(sources)
            return source
        return min(waits, key=lambda wait: wait.delay)

    def may_go_on(self, source: str | None, sessions: int, now: float) -> bool:
        """False once a reply rule suspended the destination (or ``source``) or
        lowered its cap below the ``sessions`` open: a session ends."""
        health = self.health
        if health.suspension(now) is not None or health.source_suspension(source, now):
            return False
        return sessions <= health.connection_cap(self.cap, now)

    async def prepare(self, wanted: int, source: str | None) -> None:
        """Before :meth:`grant`: shared warm-up counters (store workers) reserve
        in the store, shielded -- the pool holds recipients taken from its
        queue meanwhile, which a cancellation must not lose.  No await at all
        without them."""
        if self.warmup is not None and self.warmup.shared:
            with trio.CancelScope(shield=True):
                await self.warmup.prepare(source, wanted)

    def grant(self, wanted: int, source: str | None) -> tuple[int, Grant | None]:
        """How many of ``wanted`` recipients ``source`` may send now (counted)."""
        if self.warmup is None:
            return wanted, None
        return self.warmup.reserve(source, wanted)

    def unsent(self, grant: Grant | None, count: int) -> None:
        """``count`` recipients counted by ``grant`` never reached the server."""
        if self.warmup is not None and grant is not None:
            self.warmup.release(grant, count)

    def matches(self, replies: Sequence[Reply]) -> Iterator[tuple[ReactionRule, Reply]]:
        """The first matching rule of each distinct failure reply."""
        seen: set[Reply] = set()
        for reply in replies:
            if reply.code < 400 or reply in seen:
                continue
            seen.add(reply)
            rule = first_match(self.reactions, reply)
            if rule is not None:
                yield rule, reply
