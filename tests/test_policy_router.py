"""The TLS-plan router keeps at most as many domains' plans as the MX router
keeps answers (the "nothing unbounded" invariant), and still shares them."""

from __future__ import annotations

import random

import trio

from bulkmail.routing import DNSConfig, MXRouter
from bulkmail.tls_policy.planner import TLSPolicies
from bulkmail.tls_policy.router import PolicyRouter
from bulkmail.tls_policy.settings import TLSPolicyConfig

from .dnsserver import DNSServer


async def test_plans_are_bounded_by_the_dns_cache_size() -> None:
    async with trio.open_nursery() as nursery:
        server = DNSServer()
        await nursery.start(server.serve)
        for n in range(3):
            server.add(f"d{n}.test", "MX", "10 mx.site.test.")
        server.add("mx.site.test", "A", "127.0.0.1")
        dns = DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=2525, cache_size=2)
        policies = TLSPolicies(TLSPolicyConfig(policy="opportunistic"), dns)
        router = PolicyRouter(MXRouter(dns, rng=random.Random(1)), policies)
        for n in range(3):
            await router.route(f"d{n}.test")
        assert len(router._plans) == 2  # d0's plan went with d0's MX answer
        assert router.peek("d2.test") is not None  # a kept plan is still served
        assert router.peek("d0.test") is None
        policies.close()
        nursery.cancel_scope.cancel()


async def _world(nursery: trio.Nursery, domains: list[str], limit: int) -> tuple[
    MXRouter, PolicyRouter, TLSPolicies
]:
    """A loopback DNS server hosting ``domains`` at one MX host, and a policy
    router over an MX router whose prefetch queues hold ``limit`` domains."""
    server = DNSServer()
    await nursery.start(server.serve)
    for domain in domains:
        server.add(domain, "MX", "10 mx.site.test.")
    server.add("mx.site.test", "A", "127.0.0.1")
    dns = DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=2525,
                    prefetch_queue=limit)
    policies = TLSPolicies(TLSPolicyConfig(policy="opportunistic"), dns)
    inner = MXRouter(dns, rng=random.Random(1))
    return inner, PolicyRouter(inner, policies), policies


async def _reported(nursery: trio.Nursery, router: PolicyRouter, count: int) -> list[str]:
    """Run the prefetcher until ``count`` domains are reported (and a moment
    more: none twice); the reported domains, sorted."""
    reported: list[str] = []
    done = trio.Event()

    def on_resolved(domain: str, outcome: object) -> None:
        assert not isinstance(outcome, Exception), outcome
        reported.append(domain)
        if len(reported) == count:
            done.set()

    nursery.start_soon(router.run_prefetcher, on_resolved)
    with trio.fail_after(10):
        await done.wait()
    await trio.sleep(0.05)
    return sorted(reported)


async def test_prefetch_keeps_room_for_every_awaited_plan() -> None:
    """Queued plans plus awaited MX answers never pass the prefetch queue's
    limit, whichever path a domain takes (the inner router's window, or the
    crew once that window's queue is full), so each MX answer finds its plan
    a place and every accepted domain is reported once, by the prefetcher."""
    limit = 4
    domains = [f"d{n}.test" for n in range(10)]
    async with trio.open_nursery() as nursery:
        _inner, router, policies = await _world(nursery, domains, limit)
        accepted = [d for d in domains if router.prefetch(d)]
        # the inner window took `limit` MX answers; none more fits a plan
        assert accepted == domains[:limit]
        assert len(router._mx_ahead) + (limit - router._ahead.room()) <= limit
        assert await _reported(nursery, router, len(accepted)) == accepted
        assert all(router.peek(d) is not None for d in accepted)
        policies.close()
        nursery.cancel_scope.cancel()


async def test_plans_made_by_the_crew_count_against_the_awaited_mx_answers() -> None:
    """The other path: a domain whose MX answer is cached already (the inner
    router will not queue it) has its plan queued directly -- and that, too,
    leaves room for the plans of the MX answers still awaited."""
    limit = 4
    domains = [f"d{n}.test" for n in range(5)]
    async with trio.open_nursery() as nursery:
        inner, router, policies = await _world(nursery, domains, limit)
        for domain in domains[2:]:
            await inner.route(domain)  # MX cached, no plan yet
        assert router.prefetch("d0.test") and router.prefetch("d1.test")  # MX awaited
        assert len(router._mx_ahead) == 2
        # two plans fit beside the two awaited; a third would take an awaited one's room
        assert [router.prefetch(d) for d in domains[2:]] == [True, True, False]
        assert await _reported(nursery, router, limit) == domains[:limit]
        policies.close()
        nursery.cancel_scope.cancel()
