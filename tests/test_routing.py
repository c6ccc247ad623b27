"""MX routing against a DNS server on loopback (nothing resolves real names)."""

from __future__ import annotations

import random

import dns.rcode
import pytest
import trio

from bulkmail.routing import DNSConfig, MXRouter, RelayRouter, RoutingError, domain_of

from .dnsserver import DNSServer


async def router_for(nursery: trio.Nursery, **kwargs: object) -> tuple[MXRouter, DNSServer]:
    server = DNSServer()
    port = await nursery.start(server.serve)
    config = DNSConfig(nameservers=(("127.0.0.1", port),), mx_port=2525, **kwargs)  # type: ignore[arg-type]
    return MXRouter(config, rng=random.Random(3)), server


async def test_mx_hosts_in_preference_order() -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("pref.test", "MX", "20 backup.pref.test.")
        dns.add("pref.test", "MX", "10 primary.pref.test.")
        dns.add("primary.pref.test", "A", "127.0.0.1")
        dns.add("backup.pref.test", "A", "127.0.0.2")
        destination = await router.route("pref.test")
        nursery.cancel_scope.cancel()
    assert [h.name for h in destination.hosts] == ["primary.pref.test", "backup.pref.test"]
    assert destination.hosts[0].addresses == ("127.0.0.1",)
    assert destination.hosts[0].port == 2525
    assert destination.key == "mx:backup.pref.test,primary.pref.test"


async def test_equal_preference_is_shuffled_but_complete() -> None:
    orders = set()
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        for i in range(12):
            dns.add(f"d{i}.test", "MX", "10 a.mx.test.")
            dns.add(f"d{i}.test", "MX", "10 b.mx.test.")
        dns.add("a.mx.test", "A", "127.0.0.1")
        dns.add("b.mx.test", "A", "127.0.0.2")
        for i in range(12):
            destination = await router.route(f"d{i}.test")
            orders.add(tuple(h.name for h in destination.hosts))
            assert destination.key == "mx:a.mx.test,b.mx.test"  # one pool for the provider
        nursery.cancel_scope.cancel()
    assert orders == {("a.mx.test", "b.mx.test"), ("b.mx.test", "a.mx.test")}


async def test_implicit_mx_from_the_domains_own_address() -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("plain.test", "A", "127.0.0.9")
        destination = await router.route("plain.test")
        nursery.cancel_scope.cancel()
    assert [(h.name, h.addresses) for h in destination.hosts] == [("plain.test", ("127.0.0.9",))]


@pytest.mark.parametrize(
    "setup, code, enhanced",
    [
        (lambda d: d.add("null.test", "MX", "0 ."), 556, "5.1.10"),
        (lambda d: None, 550, "5.1.2"),  # NXDOMAIN
        (lambda d: d.set_rcode("null.test", dns.rcode.SERVFAIL), 451, "4.4.3"),
        (lambda d: d.add("null.test", "TXT", '"v=spf1 -all"'), 550, "5.4.4"),
    ],
    ids=["null-mx", "nxdomain", "servfail", "no-mx-no-address"],
)
async def test_routing_failures_carry_replies(setup, code: int, enhanced: str) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        setup(dns)
        with pytest.raises(RoutingError) as info:
            await router.route("null.test")
        nursery.cancel_scope.cancel()
    assert (info.value.reply.code, info.value.reply.enhanced) == (code, enhanced)
    assert info.value.permanent == (code >= 500)


async def test_mx_without_addresses_never_falls_back_to_the_domains_a_record() -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("noaddr.test", "MX", "10 ghost.noaddr.test.")
        dns.add("noaddr.test", "A", "127.0.0.1")  # must not be used
        dns.add("ghost.noaddr.test", "TXT", '"exists, no address"')
        with pytest.raises(RoutingError) as info:
            await router.route("noaddr.test")
        dns.add("partly.test", "MX", "10 ghost.noaddr.test.")
        dns.add("partly.test", "MX", "20 real.partly.test.")
        dns.add("real.partly.test", "A", "127.0.0.4")
        destination = await router.route("partly.test")
        nursery.cancel_scope.cancel()
    assert info.value.reply.code == 451 and not info.value.permanent
    assert [h.name for h in destination.hosts] == ["real.partly.test"]  # addressless MX skipped


async def test_cname_chain_is_followed() -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("alias.test", "MX", "10 mx.alias.test.")
        dns.add("mx.alias.test", "CNAME", "hop.alias.test.")
        dns.add("hop.alias.test", "CNAME", "final.alias.test.")
        dns.add("final.alias.test", "A", "127.0.0.7")
        destination = await router.route("alias.test")
        nursery.cancel_scope.cancel()
    assert destination.hosts[0].addresses == ("127.0.0.7",)


async def test_truncated_udp_answer_is_retried_over_tcp() -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("big.test", "MX", "10 mx.big.test.")
        dns.add("mx.big.test", "A", "127.0.0.1")
        dns.force_truncation("big.test")
        destination = await router.route("big.test")
        nursery.cancel_scope.cancel()
    assert destination.hosts[0].name == "mx.big.test"
    assert ("big.test.", "MX", "tcp") in dns.queries


async def test_a_dns_server_that_never_answers_defers() -> None:
    async with trio.open_nursery() as nursery:
        # dnspython measures its own timeouts in wall time, so keep them tiny
        router, dns = await router_for(nursery, timeout=0.2, lifetime=0.5)
        dns.add("slow.test", "MX", "10 mx.slow.test.")
        dns.blackhole("slow.test")
        with trio.fail_after(5), pytest.raises(RoutingError) as info:
            await router.route("slow.test")
        nursery.cancel_scope.cancel()
    assert info.value.reply.code == 451 and info.value.reply.enhanced == "4.4.3"


async def test_answers_are_cached_for_their_ttl(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("cached.test", "MX", "10 mx.cached.test.", ttl=60)
        dns.add("mx.cached.test", "A", "127.0.0.1", ttl=300)
        await router.route("cached.test")
        first = len(dns.queries)
        await router.route("cached.test")
        assert len(dns.queries) == first  # served from the cache
        await trio.sleep(61)
        await router.route("cached.test")
        nursery.cancel_scope.cancel()
    assert len(dns.queries) > first  # the TTL ran out: asked again


async def test_concurrent_routes_of_one_domain_share_one_query() -> None:
    async with trio.open_nursery() as nursery:
        router, dns = await router_for(nursery)
        dns.add("busy.test", "MX", "10 mx.busy.test.")
        dns.add("mx.busy.test", "A", "127.0.0.1")
        results = []

        async def route() -> None:
            results.append(await router.route("busy.test"))

        async with trio.open_nursery() as inner:
            for _ in range(50):
                inner.start_soon(route)
        nursery.cancel_scope.cancel()
    assert len(results) == 50 and len({r.key for r in results}) == 1
    assert sum(1 for q in dns.queries if q[:2] == ("busy.test.", "MX")) == 1


async def test_relay_router_and_domain_of() -> None:
    relay = RelayRouter("127.0.0.1", 2525)
    destination = await relay.route("anything.test")
    assert destination.key == "relay:127.0.0.1:2525"
    assert destination.hosts[0].addresses == ("127.0.0.1",)
    assert domain_of("User@Bücher.Example") == "xn--bcher-kva.example"
    with pytest.raises(ValueError):
        domain_of("no-at-sign")
