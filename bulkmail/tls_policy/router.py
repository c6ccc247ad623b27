"""A router that adds TLS plans to another router's MX destinations.

Wraps :class:`~bulkmail.routing.MXRouter`: a domain with a policy gets a
:class:`PolicyDestination` (its own pool, keyed by the domain, since two
domains on one provider's MX hosts may publish different policies); a
domain without one gets the inner destination unchanged, so pools stay
shared.  A domain whose policy excludes every MX host is a routing error
(``451 4.7.5``, deferred, no pool, no connection).  Plans are reused for
``refresh`` seconds, and concurrent lookups of one domain share one.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..protocol.replies import Reply
from ..routing import Destination, Resolved, Router, RoutingError
from .planner import PolicyDestination, TLSPolicies


@dataclass(frozen=True, slots=True)
class _Entry:
    inner: Destination
    #: the destination with its plan, or why no host of it may be used
    outer: Destination | Reply
    expires: float


def _unwrap(outcome: Destination | Reply) -> Destination:
    if isinstance(outcome, Reply):
        raise RoutingError(outcome)  # a fresh error each time: no shared traceback
    return outcome


class PolicyRouter:
    """``route`` / ``peek`` like the inner router, with TLS plans attached."""

    def __init__(self, inner: Router, policies: TLSPolicies) -> None:
        self.inner = inner
        self.policies = policies
        self._plans: dict[str, _Entry] = {}
        self._flights: dict[str, trio.Event] = {}

    async def route(self, domain: str) -> Destination:
        inner = await self.inner.route(domain)
        while True:
            entry = self._plans.get(domain)
            if entry is not None and entry.inner is inner \
                    and trio.current_time() < entry.expires:
                return _unwrap(entry.outer)
            flight = self._flights.get(domain)
            if flight is None:
                break
            await flight.wait()
        flight = self._flights[domain] = trio.Event()
        try:
            plan = await self.policies.plan(domain, inner)
            outer: Destination | Reply = inner
            if plan is not None:
                refused = plan.refuse_all(inner)
                outer = refused.reply if refused is not None else PolicyDestination(
                    f"{inner.key}|tls:{domain}", inner.hosts, plan
                )
            self._plans[domain] = _Entry(
                inner, outer, trio.current_time() + self.policies.config.refresh
            )
        finally:
            del self._flights[domain]
            flight.set()
        return _unwrap(outer)

    def prefetch(self, domain: str) -> bool:
        """Warm the inner router's MX answer, but report nothing: the TLS plan
        is made by ``route`` (fast once the MX answer is cached)."""
        self.inner.prefetch(domain)
        return False

    async def run_prefetcher(self, on_resolved: Resolved | None = None) -> None:
        await self.inner.run_prefetcher(None)

    def peek(self, domain: str) -> Destination | None:
        entry = self._plans.get(domain)
        if entry is None:
            return None
        inner = self.inner.peek(domain)
        outer = entry.outer
        if inner is not entry.inner or isinstance(outer, Reply) \
                or trio.current_time() >= entry.expires:
            return None
        return outer
