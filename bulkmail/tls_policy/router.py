"""A router that adds TLS plans to another router's MX destinations.

Wraps :class:`~bulkmail.routing.MXRouter`: a domain with a policy gets a
:class:`PolicyDestination` (its own pool, keyed by the domain, since two
domains on one provider's MX hosts may publish different policies); a
domain without one gets the inner destination unchanged, so pools stay
shared.  A domain whose policy excludes every MX host is a routing error
(``451 4.7.5``, deferred, no pool, no connection).  Plans are reused for
``refresh`` seconds, and concurrent lookups of one domain share one (a
:class:`~bulkmail.ttl_cache.CoalescingCache`, bounded like the MX answers).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..prefetch import PrefetchQueue
from ..protocol.replies import Reply
from ..routing import (
    Destination,
    Resolved,
    Router,
    RoutingError,
    canonical_domain,
    unwrap_route,
)
from ..ttl_cache import CoalescingCache
from .planner import PolicyDestination, TLSPolicies


@dataclass(frozen=True, slots=True)
class _Entry:
    #: the MX answer the plan was made for (a new answer needs a new plan)
    inner: Destination
    #: the destination with its plan, or why no host of it may be used
    outer: Destination | Reply


class PolicyRouter:
    """``route`` / ``peek`` like the inner router, with TLS plans attached."""

    prefetches = True

    def __init__(self, inner: Router, policies: TLSPolicies) -> None:
        self.inner = inner
        self.policies = policies
        config = policies.dns.config
        self._plans: CoalescingCache[str, _Entry] = CoalescingCache(config.cache_size)
        self._ahead: PrefetchQueue[Destination | RoutingError] = PrefetchQueue(
            config.prefetch_queue
        )
        # prefetched domains whose MX answer the inner router's prefetcher
        # is getting (its window: ~25 us of CPU less per domain than a crew
        # task awaiting the inner route()); their plans are queued on arrival
        self._mx_ahead: set[str] = set()
        self._on_resolved: Resolved | None = None

    async def route(self, domain: str) -> Destination:
        inner = await self.inner.route(domain)
        while True:
            entry = await self._plans.fetch(domain, lambda: self._plan(domain, inner))
            if entry.inner is inner:
                return unwrap_route(entry.outer)
            self._plans.discard(domain)  # planned for an older MX answer: plan again

    async def _plan(self, domain: str, inner: Destination) -> tuple[_Entry, float]:
        plan = await self.policies.plan(domain, inner)
        outer: Destination | Reply = inner
        if plan is not None:
            refused = plan.refuse_all(inner)
            outer = refused.reply if refused is not None else PolicyDestination(
                f"{inner.key}|tls:{domain}", inner.hosts, plan
            )
        return _Entry(inner, outer), self.policies.config.refresh

    def prefetch(self, domain: str) -> bool:
        """Queue ``domain`` for the MX answer and the TLS plan together (never
        waits); False when its plan is cached or being made by ``route``, or
        the queue is full -- as :meth:`MXRouter.prefetch <bulkmail.routing.MXRouter.prefetch>`.

        Without this, each domain that missed the cache became a task of the
        engine's awaiting ``route()``: 100,000 domains under MTA-STS took 4x
        the time of the MX answers alone, and 150 MB more at the peak."""
        domain = canonical_domain(domain)  # as the inner router reports it
        if domain in self._ahead or domain in self._mx_ahead:
            return True
        if self._plans.busy(domain) or self.peek(domain) is not None:
            return False
        # The plan queue keeps room for the plan of every domain whose MX
        # answer is coming (queued + awaited MX <= its limit), on both paths:
        # the MX answer through the inner router's window, or, when that
        # refuses it (its queue full), MX and plan both by the crew.  So an MX
        # answer always finds its plan a place, and no domain needs a task
        # of its own (issue 22: this bound once held on the first path only).
        if len(self._mx_ahead) >= self._ahead.room():
            return False  # full: the engine resolves it with a task of its own
        if self.inner.prefetch(domain):
            self._mx_ahead.add(domain)  # its plan is queued when the MX answer is in
            return True
        return self._ahead.add(domain)

    async def run_prefetcher(self, on_resolved: Resolved | None = None) -> None:
        """Make prefetched domains' plans until cancelled, each outcome to
        ``on_resolved``: the MX answer through the inner router's prefetcher
        (one window of queries), then the TLS policy by a crew of half
        ``max_queries`` tasks (a domain the inner router would not queue:
        both by the crew); meanwhile the MX router's and the policy lookups'
        shared UDP sockets stay open (:meth:`PolicyDNS.serve`), in this nursery."""
        async with trio.open_nursery() as nursery:
            self._on_resolved = on_resolved
            try:
                await nursery.start(self.policies.dns.serve)
                nursery.start_soon(self.inner.run_prefetcher, self._mx_answered)
                crew = self.policies.dns.config.max_queries // 2
                await self._ahead.run(self.route, crew, on_resolved, RoutingError)
            finally:
                self._on_resolved = None
                self._mx_ahead.clear()

    def _mx_answered(self, domain: str, outcome: Destination | RoutingError) -> None:
        """The inner prefetcher's outcome for a domain: a failure is the
        domain's outcome; an MX answer queues its plan, which the crew makes
        (``route`` then finds the answer cached)."""
        if domain not in self._mx_ahead:
            return  # prefetched through the inner router by somebody else
        self._mx_ahead.discard(domain)
        if isinstance(outcome, RoutingError):
            if self._on_resolved is not None:
                self._on_resolved(domain, outcome)
        elif not self._ahead.add(domain):  # prefetch() kept it room: a bug, said aloud
            raise RuntimeError(f"no room in the plan queue for {domain}'s awaited MX answer")

    def peek(self, domain: str) -> Destination | None:
        entry = self._plans.get(domain)
        if entry is None or isinstance(entry.outer, Reply):
            return None
        return entry.outer if self.inner.peek(domain) is entry.inner else None
