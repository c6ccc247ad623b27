"""Resolving ahead through one window of queries (MXRouter.run_prefetcher over
dns_client.QueryWindow): every kind of answer settles as ``route()`` would
settle it, lost replies are sent again, silence fails after the lifetime, and
the in-flight bound holds -- against the loopback DNS server."""

from __future__ import annotations

import random

import dns.rcode
import pytest
import trio
import trio.testing

from bulkmail.routing import Destination, DNSConfig, Host, MXRouter, RoutingError

from .dnsserver import DNSServer, route_error

MX_PORT = 2525
Outcomes = dict[str, Destination | RoutingError]


async def prefetching(
    nursery: trio.Nursery, server: DNSServer, **config: object
) -> tuple[MXRouter, Outcomes]:
    """A router whose prefetcher runs (its window over the shared sockets)."""
    router = MXRouter(
        DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=MX_PORT,
                  **config),  # type: ignore[arg-type]
        rng=random.Random(1),
    )
    outcomes: Outcomes = {}
    nursery.start_soon(router.run_prefetcher, outcomes.__setitem__)
    await trio.testing.wait_all_tasks_blocked()
    assert router.dns.client is not None and router.dns.client.running
    return router, outcomes


async def resolved(outcomes: Outcomes, domains: list[str]) -> None:
    while not all(d in outcomes for d in domains):
        await trio.sleep(0.01)


def reply_of(outcome: Destination | RoutingError) -> tuple[int, str]:
    assert isinstance(outcome, RoutingError)
    return outcome.reply.code, outcome.reply.enhanced


async def test_every_kind_of_answer_settles_as_route_would(
    nursery: trio.Nursery, server: DNSServer
) -> None:
    server.add("mx.shared.test", "A", "127.0.0.2")
    for n in range(40):
        server.add(f"d{n}.test", "MX", "10 mx.shared.test.")
    server.add("own.test", "MX", "10 mx.own.test.")  # its host is not cached yet
    server.add("mx.own.test", "A", "127.0.0.3")
    server.add("bare.test", "A", "127.0.0.4")  # no MX: the implicit MX
    server.add("null.test", "MX", "0 .")
    server.add("alias.test", "CNAME", "d0.test.")
    server.set_rcode("broken.test", dns.rcode.SERVFAIL)
    server.force_truncation("big.test")
    server.add("big.test", "MX", "10 mx.shared.test.")
    router, outcomes = await prefetching(nursery, server)
    await router.route("d0.test")  # mx.shared.test's address in the host cache

    odd = ["own.test", "bare.test", "null.test", "alias.test", "broken.test",
           "missing.test", "big.test", "[127.0.0.9]"]
    domains = [f"d{n}.test" for n in range(1, 40)] + odd
    assert all(router.prefetch(d) for d in domains)
    await resolved(outcomes, domains)

    shared = (Host("mx.shared.test", ("127.0.0.2",), MX_PORT, 10),)
    for n in range(1, 40):
        outcome = outcomes[f"d{n}.test"]
        assert isinstance(outcome, Destination) and outcome.hosts == shared
        assert outcome is outcomes["d1.test"]  # one interned site
    own = outcomes["own.test"]
    assert isinstance(own, Destination)
    assert own.hosts == (Host("mx.own.test", ("127.0.0.3",), MX_PORT, 10),)
    bare = outcomes["bare.test"]
    assert isinstance(bare, Destination) and bare.key == "mx:bare.test"
    assert reply_of(outcomes["null.test"]) == (556, "5.1.10")
    alias = outcomes["alias.test"]
    assert isinstance(alias, Destination) and alias.key == "mx:mx.shared.test"
    assert reply_of(outcomes["broken.test"]) == (451, "4.4.3")
    assert reply_of(outcomes["missing.test"]) == (550, "5.1.2")
    big = outcomes["big.test"]
    assert isinstance(big, Destination) and big.hosts == shared  # asked again over TCP
    literal = outcomes["[127.0.0.9]"]
    assert isinstance(literal, Destination) and literal.key == "literal:127.0.0.9"
    # each outcome is cached as route() caches it: no query more
    queries = len(server.queries)
    assert router.peek("d7.test") is outcomes["d7.test"]
    assert reply_of(await route_error(router, "null.test")) == (556, "5.1.10")
    assert len(server.queries) == queries
    assert router.dns.in_flight == 0  # every query slot given back
    # the plain answers and the final failures needed no task of their own;
    # the host not cached, no MX, truncation and the literal did
    assert router.settled_in_window == 39 + 4  # d1..d39, null, broken, missing, alias


async def test_a_lost_reply_is_sent_again_and_silence_fails_after_the_lifetime(
    nursery: trio.Nursery, server: DNSServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.add("mx.shared.test", "A", "127.0.0.2")
    server.add("lossy.test", "MX", "10 mx.shared.test.")
    server.add("fine.test", "MX", "10 mx.shared.test.")
    server.drop("lossy.test", 2)
    server.blackhole("silent.test")
    router, outcomes = await prefetching(nursery, server, timeout=1.0, lifetime=3.5)
    await router.route("fine.test")
    start = trio.current_time()
    for domain in ("lossy.test", "silent.test"):
        assert router.prefetch(domain)
    await resolved(outcomes, ["lossy.test"])
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.02)  # two timeouts
    assert isinstance(outcomes["lossy.test"], Destination)
    assert server.queries.count(("lossy.test", "MX", "udp")) == 3
    assert "silent.test" not in outcomes  # not given up before its lifetime
    await resolved(outcomes, ["silent.test"])
    assert trio.current_time() - start == pytest.approx(3.5, abs=0.02)
    assert reply_of(outcomes["silent.test"]) == (451, "4.4.3")
    assert server.queries.count(("silent.test", "MX", "udp")) == 4  # 0, 1, 2, 3 s
    assert router.dns.in_flight == 0
    assert router.settled_in_window == 2  # resent, and given up, by the window


async def test_the_window_keeps_at_most_half_the_query_limit_in_flight(
    nursery: trio.Nursery, server: DNSServer
) -> None:
    server.add("mx.shared.test", "A", "127.0.0.2")
    domains = [f"w{n}.test" for n in range(300)]
    for domain in domains:
        server.add(domain, "MX", "10 mx.shared.test.")
    router, outcomes = await prefetching(nursery, server, max_queries=16)
    await router.route(domains[0])
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, router.dns.in_flight)
            await trio.lowlevel.checkpoint()

    nursery.start_soon(watch)
    assert all(router.prefetch(d) for d in domains[1:])
    await resolved(outcomes, domains[1:])
    assert 1 < peak <= 8
    assert all(isinstance(outcomes[d], Destination) for d in domains[1:])
    assert server.queries.count(("w5.test", "MX", "udp")) == 1
    assert router.settled_in_window == 299


class LiveTasks(trio.abc.Instrument):
    """The most tasks named ``suffix`` alive at once."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.live = self.peak = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.live += 1
            self.peak = max(self.peak, self.live)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.live -= 1


async def test_with_the_nameserver_refusing_the_tasks_stay_few(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # nobody listens on the port: every query is refused, so every domain
    # needs a task of its own (dnspython reports the refusal) -- at most a
    # window's worth at once, not one per queued domain
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", port),), max_queries=16,
                                lifetime=2.0))
    outcomes: Outcomes = {}
    tasks = LiveTasks("_resolve_alone")
    trio.lowlevel.add_instrument(tasks)
    nursery.start_soon(router.run_prefetcher, outcomes.__setitem__)
    await trio.testing.wait_all_tasks_blocked()
    domains = [f"r{n}.test" for n in range(200)]
    assert all(router.prefetch(d) for d in domains)
    await resolved(outcomes, domains)
    assert {reply_of(outcomes[d])[0] for d in domains} == {451}
    assert 1 <= tasks.peak <= 8


async def test_a_task_of_its_own_ending_lets_the_next_domain_go_at_once(
    nursery: trio.Nursery, server: DNSServer, autojump_clock: trio.testing.MockClock
) -> None:
    # a window of 2: a.test's answer needs its MX host's address (a task of its
    # own), b.test's first query is lost (sent again after 1 s); c.test must
    # go as soon as a.test's task ends, not wait for b.test's resend
    server.add("mx.a.test", "A", "127.0.0.2")
    for name in ("a.test", "b.test", "c.test"):
        server.add(name, "MX", "10 mx.a.test.")
    server.drop("b.test", 1)
    router, outcomes = await prefetching(nursery, server, max_queries=4, timeout=1.0)
    start = trio.current_time()
    for domain in ("a.test", "b.test", "c.test"):
        assert router.prefetch(domain)
    await resolved(outcomes, ["c.test"])
    assert trio.current_time() - start < 0.5
    assert "b.test" not in outcomes
    await resolved(outcomes, ["b.test"])
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.02)


async def test_same_mx_records_route_alike_until_their_hosts_addresses_expire(
    nursery: trio.Nursery, server: DNSServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.add("mx.shared.test", "A", "127.0.0.2", ttl=60)
    for n in range(6):
        server.add(f"d{n}.test", "MX", "10 mx.shared.test.", ttl=3600)
        # tied preferences: each domain draws its own order
        server.add(f"t{n}.test", "MX", "10 mx.shared.test.", ttl=3600)
        server.add(f"t{n}.test", "MX", "10 mx.other.test.", ttl=3600)
    server.add("mx.other.test", "A", "127.0.0.3", ttl=3600)
    router, outcomes = await prefetching(nursery, server)
    await router.route("d0.test")  # both hosts' addresses in the host cache
    await router.route("t0.test")
    before = len(server.queries)
    assert router.prefetch("d1.test") and router.prefetch("d2.test")
    await resolved(outcomes, ["d1.test", "d2.test"])
    assert outcomes["d1.test"] is outcomes["d2.test"] is router.peek("d0.test")
    assert len(server.queries) == before + 2  # the two MX queries, no host lookup

    tied = [f"t{n}.test" for n in range(1, 6)]
    assert all(router.prefetch(d) for d in tied)
    await resolved(outcomes, tied)
    orders = set()
    for domain in tied:
        outcome = outcomes[domain]
        assert isinstance(outcome, Destination)
        orders.add(tuple(h.name for h in outcome.hosts))
    assert len(orders) == 2  # both orders drawn (rng seeded: 5 domains, 2 orders)

    # the shared host's address expires after 60 s: the next domain with the
    # same MX records has it looked up again, and routes to its new address
    await trio.sleep(61)
    server.records.pop(("mx.shared.test.", "A"))
    server.add("mx.shared.test", "A", "127.0.0.9", ttl=60)
    assert router.prefetch("d3.test")
    await resolved(outcomes, ["d3.test"])
    fresh = outcomes["d3.test"]
    assert isinstance(fresh, Destination)
    assert fresh.hosts == (Host("mx.shared.test", ("127.0.0.9",), MX_PORT, 10),)
    assert ("mx.shared.test", "A", "udp") in server.queries[before:]
