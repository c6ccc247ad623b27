"""MX and relay routing against the loopback DNS server (nothing real is resolved)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dns.rcode
import pytest
import trio
import trio.testing

from bulkmail.relay_router import RELAY_FAILURE_TTL, RelayRouter
from bulkmail.routing import (
    Destination,
    DNSConfig,
    Host,
    MXRouter,
    RoutingError,
    domain_of,
)

from .dnsserver import DNSServer, route_error

MX_PORT = 2525


def mx_router(server: DNSServer, seed: int = 1, **config: Any) -> MXRouter:
    dns_config = DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=MX_PORT, **config)
    return MXRouter(dns_config, rng=random.Random(seed))


def names(destination: Destination) -> list[str]:
    return [h.name for h in destination.hosts]


# -- what the DNS says ---------------------------------------------------------------


async def test_mx_hosts_come_in_preference_order(server: DNSServer) -> None:
    server.add("pref.test", "MX", "30 c.pref.test.")
    server.add("pref.test", "MX", "10 a.pref.test.")
    server.add("pref.test", "MX", "20 b.pref.test.")
    server.add("a.pref.test", "A", "127.0.0.1")
    server.add("b.pref.test", "A", "127.0.0.2")
    server.add("b.pref.test", "AAAA", "::2")
    server.add("c.pref.test", "AAAA", "::3")
    destination = await mx_router(server).route("pref.test")
    assert destination == Destination(
        "mx:a.pref.test,b.pref.test,c.pref.test",
        (
            Host("a.pref.test", ("127.0.0.1",), MX_PORT, 10),
            Host("b.pref.test", ("127.0.0.2", "::2"), MX_PORT, 20),
            Host("c.pref.test", ("::3",), MX_PORT, 30),
        ),
    )


async def test_equal_preference_hosts_are_shuffled_with_the_rng(server: DNSServer) -> None:
    orders: Counter[tuple[str, ...]] = Counter()
    router = mx_router(server, seed=42)
    for i in range(20):
        domain = f"d{i}.spread.test"
        server.add(domain, "MX", "10 mx1.spread.test.")
        server.add(domain, "MX", "10 mx2.spread.test.")
        server.add(domain, "MX", "5 first.spread.test.")
    for host in ("mx1", "mx2", "first"):
        server.add(f"{host}.spread.test", "A", "127.0.0.1")
    for i in range(20):
        orders[tuple(names(await router.route(f"d{i}.spread.test")))] += 1
    assert set(orders) == {
        ("first.spread.test", "mx1.spread.test", "mx2.spread.test"),
        ("first.spread.test", "mx2.spread.test", "mx1.spread.test"),
    }
    # the same seed gives the same orders: the shuffle comes from the rng alone
    again = mx_router(server, seed=42)
    assert [tuple(names(await again.route(f"d{i}.spread.test"))) for i in range(20)] == [
        tuple(names(await router.route(f"d{i}.spread.test"))) for i in range(20)
    ]


async def test_no_mx_means_the_domain_itself_is_the_implicit_mx(server: DNSServer) -> None:
    server.add("implicit.test", "AAAA", "::1")
    server.add("implicit.test", "A", "127.0.0.7")
    destination = await mx_router(server).route("implicit.test")
    assert destination == Destination(
        "mx:implicit.test", (Host("implicit.test", ("127.0.0.7", "::1"), MX_PORT),)
    )


async def test_domain_with_neither_mx_nor_address_bounces(server: DNSServer) -> None:
    server.add("bare.test", "TXT", '"v=spf1 -all"')
    error = await route_error(mx_router(server), "bare.test")
    assert error.permanent and error.reply.code == 550


async def test_null_mx_bounces_at_once_with_556(server: DNSServer) -> None:
    server.add("nomail.test", "MX", "0 .")
    server.add("nomail.test", "A", "127.0.0.1")
    error = await route_error(mx_router(server), "nomail.test")
    assert error.permanent
    assert (error.reply.code, error.reply.enhanced) == (556, "5.1.10")
    assert server.queries == [("nomail.test", "MX", "udp")]  # no address lookups


async def test_nxdomain_is_permanent_550(server: DNSServer) -> None:
    error = await route_error(mx_router(server), "missing.test")
    assert error.permanent
    assert (error.reply.code, error.reply.enhanced) == (550, "5.1.2")


async def test_servfail_is_transient(server: DNSServer) -> None:
    server.set_rcode("broken.test", dns.rcode.SERVFAIL)
    error = await route_error(mx_router(server), "broken.test")
    assert not error.permanent
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")


async def test_silent_server_is_transient_after_the_lifetime(
    server: DNSServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.blackhole("slow.test")
    router = mx_router(server, timeout=1.0, lifetime=3.5)
    start = trio.current_time()
    error = await route_error(router, "slow.test")
    assert trio.current_time() - start == 3.5  # the lifetime runs on trio's clock
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert len(server.queries) >= 3  # one per 1 s attempt (plus backoff) until then


async def test_mx_host_without_address_is_skipped(server: DNSServer) -> None:
    server.add("partial.test", "MX", "10 ghost.partial.test.")  # NXDOMAIN
    server.add("partial.test", "MX", "20 empty.partial.test.")  # no A / AAAA
    server.add("partial.test", "MX", "30 real.partial.test.")
    server.add("empty.partial.test", "TXT", '"no address here"')
    server.add("real.partial.test", "A", "127.0.0.3")
    destination = await mx_router(server).route("partial.test")
    assert destination.hosts == (Host("real.partial.test", ("127.0.0.3",), MX_PORT, 30),)
    # the key is the MX set, not what happened to resolve this time
    assert destination.key == "mx:empty.partial.test,ghost.partial.test,real.partial.test"


async def test_addressless_mx_hosts_defer_and_never_use_the_domains_own_a(
    server: DNSServer,
) -> None:
    server.add("lost.test", "MX", "10 mx1.lost.test.")
    server.add("lost.test", "MX", "20 mx2.lost.test.")
    server.add("lost.test", "A", "127.0.0.1")
    server.add("mx2.lost.test", "TXT", '"nothing"')
    error = await route_error(mx_router(server), "lost.test")
    assert not error.permanent
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.4")
    assert ("lost.test", "A", "udp") not in server.queries
    assert {q[:2] for q in server.queries} == {
        ("lost.test", "MX"),
        ("mx1.lost.test", "A"), ("mx1.lost.test", "AAAA"),
        ("mx2.lost.test", "A"), ("mx2.lost.test", "AAAA"),
    }


async def test_mx_host_lookup_failure_is_transient(server: DNSServer) -> None:
    server.add("flaky.test", "MX", "10 mx.flaky.test.")
    server.set_rcode("mx.flaky.test", dns.rcode.SERVFAIL)
    error = await route_error(mx_router(server), "flaky.test")
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")


async def test_cname_chains_are_followed(server: DNSServer) -> None:
    server.add("alias.test", "CNAME", "real.test.")
    server.add("real.test", "MX", "10 mx.alias.test.")
    server.add("mx.alias.test", "CNAME", "mx.middle.test.")
    server.add("mx.middle.test", "CNAME", "mx.final.test.")
    server.add("mx.final.test", "A", "127.0.0.9")
    destination = await mx_router(server).route("alias.test")
    assert destination.hosts == (Host("mx.alias.test", ("127.0.0.9",), MX_PORT, 10),)


async def test_truncated_udp_answer_is_retried_over_tcp(server: DNSServer) -> None:
    server.add("big.test", "MX", "10 mx.big.test.")
    server.add("mx.big.test", "A", "127.0.0.4")
    server.force_truncation("big.test")
    destination = await mx_router(server).route("big.test")
    assert names(destination) == ["mx.big.test"]
    assert server.queries[:2] == [("big.test", "MX", "udp"), ("big.test", "MX", "tcp")]


async def test_address_literal_needs_no_dns(server: DNSServer) -> None:
    router = mx_router(server)
    v4 = await router.route("[127.0.0.5]")
    v6 = await router.route("[IPv6:0:0:0:0:0:0:0:1]")
    assert v4.hosts == (Host("127.0.0.5", ("127.0.0.5",), MX_PORT),)
    assert v6.hosts == (Host("::1", ("::1",), MX_PORT),)
    assert server.queries == []


# -- cache and coalescing ----------------------------------------------------------
# mock_clock (never moves by itself): time passes only when the test jumps it, so
# real loopback I/O cannot race a virtual timeout.


async def test_answers_are_cached_for_the_smallest_ttl(
    server: DNSServer, mock_clock: trio.testing.MockClock
) -> None:
    server.add("cached.test", "MX", "10 mx.cached.test.", ttl=300)
    server.add("mx.cached.test", "A", "127.0.0.1", ttl=60)
    server.add("mx.cached.test", "AAAA", "::1", ttl=120)
    router = mx_router(server)
    first = await router.route("cached.test")
    queried = len(server.queries)
    assert queried == 3
    mock_clock.jump(59.9)
    assert await router.route("cached.test") is first
    assert len(server.queries) == queried
    mock_clock.jump(0.1)
    assert await router.route("cached.test") == first
    assert len(server.queries) == 2 * queried


async def test_negative_answers_are_cached_for_the_soa_minimum(
    server: DNSServer, mock_clock: trio.testing.MockClock
) -> None:
    server.add("neg.test", "SOA", "ns.neg.test. admin.neg.test. 1 3600 600 86400 30", ttl=3600)
    router = mx_router(server)
    await route_error(router, "gone.neg.test")
    await route_error(router, "gone.neg.test")
    assert server.queries == [("gone.neg.test", "MX", "udp")]
    mock_clock.jump(30)
    error = await route_error(router, "gone.neg.test")
    assert error.reply.code == 550
    assert len(server.queries) == 2


async def test_failures_are_cached_briefly(
    server: DNSServer, mock_clock: trio.testing.MockClock
) -> None:
    server.set_rcode("down.test", dns.rcode.SERVFAIL)
    router = mx_router(server, failure_ttl=10.0)
    await route_error(router, "down.test")
    queried = len(server.queries)
    await route_error(router, "down.test")
    assert len(server.queries) == queried
    mock_clock.jump(10)
    await route_error(router, "down.test")
    assert len(server.queries) == 2 * queried


async def test_cache_is_bounded_least_recently_used_first(
    server: DNSServer, mock_clock: trio.testing.MockClock
) -> None:
    for name in ("a", "b", "c"):
        server.add(f"{name}.lru.test", "A", "127.0.0.1")
    router = mx_router(server, cache_size=2)

    async def queries_for(domain: str) -> int:
        before = len(server.queries)
        await router.route(domain)
        return len(server.queries) - before

    assert await queries_for("a.lru.test") == 3  # MX (no data), A, AAAA
    assert await queries_for("b.lru.test") == 3
    assert await queries_for("a.lru.test") == 0  # a is now the most recent
    assert await queries_for("c.lru.test") == 3  # evicts b
    assert await queries_for("a.lru.test") == 0
    assert await queries_for("b.lru.test") == 3


async def test_concurrent_routes_of_one_domain_make_one_lookup(server: DNSServer) -> None:
    server.add("busy.test", "MX", "10 mx.busy.test.")
    server.add("mx.busy.test", "A", "127.0.0.1")
    router = mx_router(server)
    results: list[Destination] = []

    async def one() -> None:
        results.append(await router.route("busy.test"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(results) == 50 and all(r is results[0] for r in results)
    assert sorted(q[:2] for q in server.queries) == [
        ("busy.test", "MX"), ("mx.busy.test", "A"), ("mx.busy.test", "AAAA"),
    ]


async def test_waiters_take_over_when_the_querying_task_is_cancelled(server: DNSServer) -> None:
    server.add("slow.test", "MX", "10 mx.slow.test.")
    server.add("mx.slow.test", "A", "127.0.0.1")
    server.blackhole("slow.test")
    router = mx_router(server)
    results: list[Destination] = []

    async def route() -> None:
        results.append(await router.route("slow.test"))

    async with trio.open_nursery() as nursery:
        leader = trio.CancelScope()

        async def lead() -> None:
            with leader:
                await route()

        nursery.start_soon(lead)
        await trio.testing.wait_all_tasks_blocked()  # the leader's query goes unanswered
        nursery.start_soon(route)
        await trio.testing.wait_all_tasks_blocked()  # the follower waits on the leader
        assert server.queries == [("slow.test", "MX", "udp")]
        server.blackholed.clear()
        leader.cancel()
    assert len(results) == 1 and names(results[0]) == ["mx.slow.test"]
    assert server.queries[1][:2] == ("slow.test", "MX")  # the follower asked again


async def test_domains_with_the_same_mx_set_share_a_key(server: DNSServer) -> None:
    for domain in ("one.test", "two.test"):
        server.add(domain, "MX", "10 mx-b.host.test.")
        server.add(domain, "MX", "20 MX-A.host.test.")
    server.add("three.test", "MX", "10 mx-a.host.test.")
    for host in ("mx-a", "mx-b"):
        server.add(f"{host}.host.test", "A", "127.0.0.1")
    router = mx_router(server)
    one, two, three = [await router.route(d) for d in ("one.test", "two.test", "three.test")]
    assert one.key == two.key == "mx:mx-a.host.test,mx-b.host.test"
    assert three.key == "mx:mx-a.host.test"


# -- relay and addresses -----------------------------------------------------------


async def test_relay_router_sends_every_domain_to_the_smarthost() -> None:
    router = RelayRouter("127.0.0.1", 2526)
    expected = Destination("relay:127.0.0.1:2526", (Host("127.0.0.1", ("127.0.0.1",), 2526),))
    assert await router.route("a.test") == expected
    assert await router.route("b.example") == expected


class FakeHostnameResolver(trio.abc.HostnameResolver):
    """Stands in for the system resolver so no real name is ever looked up."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def getaddrinfo(
        self, host: bytes | str | None, port: bytes | str | int | None,
        family: int = 0, type: int = 0, proto: int = 0, flags: int = 0,
    ) -> list[Any]:
        if isinstance(host, bytes):  # trio hands over IDNA-encoded bytes
            host = host.decode("ascii")
        self.calls.append(host)
        if host != "smarthost.test":
            raise trio.socket.gaierror(trio.socket.EAI_NONAME, "not found")
        v6 = (trio.socket.AF_INET6, type, 6, "", ("::1", port, 0, 0))
        v4 = (trio.socket.AF_INET, type, 6, "", ("127.0.0.1", port))
        return [v6, v4, v4]

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_relay_name_is_resolved_lazily_once(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeHostnameResolver()
    trio.socket.set_custom_hostname_resolver(fake)
    router = RelayRouter("smarthost.test", 587)
    assert fake.calls == []  # nothing at construction
    async with trio.open_nursery() as nursery:
        for d in range(10):
            nursery.start_soon(router.route, f"d{d}.test")
    destination = await router.route("x.test")
    assert destination == Destination(
        "relay:smarthost.test:587", (Host("smarthost.test", ("127.0.0.1", "::1"), 587),)
    )
    assert fake.calls == ["smarthost.test"]


async def test_unresolvable_relay_is_transient_and_retried_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeHostnameResolver()
    trio.socket.set_custom_hostname_resolver(fake)
    router = RelayRouter("nowhere.test")
    for _ in range(3):
        with pytest.raises(RoutingError) as info:
            await router.route("a.test")
        assert not info.value.permanent and info.value.reply.code == 451
    assert fake.calls == ["nowhere.test"]  # the failure is remembered for a while
    await trio.sleep(RELAY_FAILURE_TTL)
    with pytest.raises(RoutingError):
        await router.route("a.test")
    assert fake.calls == ["nowhere.test"] * 2


def test_domain_of_is_canonical() -> None:
    assert domain_of("User@Example.TEST") == "example.test"
    assert domain_of('"a@b"@x.test.') == "x.test"
    assert domain_of("u@Bücher.example") == "xn--bcher-kva.example"
    with pytest.raises(ValueError):
        domain_of("no-at-sign")
    with pytest.raises(ValueError):
        domain_of("trailing@")


async def test_mx_pointing_to_the_domain_itself_is_an_ordinary_host(server: DNSServer) -> None:
    server.add("self.test", "MX", "10 self.test.")
    server.add("self.test", "A", "127.0.0.8")
    destination = await mx_router(server).route("self.test")
    assert names(destination) == ["self.test"]
    assert destination.hosts[0].addresses == ("127.0.0.8",)
