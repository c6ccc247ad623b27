"""The shared-socket DNS client (bulkmail/dns_client.py) under the router: lost
replies resent, strays ignored, truncation over TCP, and every answer meaning
what it meant with a socket per query -- all against loopback servers."""

from __future__ import annotations

import functools
import json
import random
import resource
import sys
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest
import trio
import trio.testing

from bulkmail.dns_client import UDPClient
from bulkmail.dns_lookup import DNSLookup, Records
from bulkmail.routing import DNSConfig, Host, MXRouter, RoutingError
from bulkmail.tls_policy.lookup import LookupFailed, PolicyDNS

from .dnsserver import DNSServer, route_error

MX_PORT = 2525


async def served_router(
    nursery: trio.Nursery, server: DNSServer, **config: Any
) -> tuple[MXRouter, UDPClient]:
    """A router whose lookups go over the shared sockets (as the engine runs it)."""
    router = MXRouter(
        DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=MX_PORT, **config),
        rng=random.Random(1),
    )
    assert await nursery.start(router.dns.serve) is True
    client = router.dns.client
    assert client is not None and client.running
    return router, client


async def test_answers_mean_what_they_meant_over_the_shared_socket(
    nursery: trio.Nursery, server: DNSServer
) -> None:
    server.add("plain.test", "MX", "10 mx.plain.test.")
    server.add("mx.plain.test", "A", "127.0.0.2")
    server.add("bare.test", "A", "127.0.0.3")  # no MX: the implicit MX
    server.add("null.test", "MX", "0 .")
    server.add("alias.test", "CNAME", "plain.test.")
    server.set_rcode("broken.test", dns.rcode.SERVFAIL)
    router, client = await served_router(nursery, server)

    plain = await router.route("plain.test")
    assert plain.hosts == (Host("mx.plain.test", ("127.0.0.2",), MX_PORT, 10),)
    bare = await router.route("bare.test")
    assert bare.key == "mx:bare.test" and bare.hosts[0].addresses == ("127.0.0.3",)
    assert (await router.route("alias.test")).key == "mx:mx.plain.test"
    null = await route_error(router, "null.test")
    assert (null.reply.code, null.reply.enhanced) == (556, "5.1.10")
    missing = await route_error(router, "missing.test")
    assert (missing.reply.code, missing.reply.enhanced) == (550, "5.1.2")
    broken = await route_error(router, "broken.test")
    assert (broken.reply.code, broken.reply.enhanced) == (451, "4.4.3")
    # every query went over the shared socket, once: no fallback asked again
    assert client.sent == router.dns.sent == len(server.queries)
    assert {transport for _, _, transport in server.queries} == {"udp"}


async def test_a_server_answering_udp_in_a_thread_means_the_same_and_stops(
    nursery: trio.Nursery,
) -> None:
    # the benchmarks' DNS process answers UDP from a thread (cheaper per query)
    threaded = DNSServer()
    threaded.add("plain.test", "MX", "10 mx.plain.test.")
    threaded.add("mx.plain.test", "A", "127.0.0.2")
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as serving:
            await serving.start(functools.partial(threaded.serve, udp_thread=True))
            router, client = await served_router(serving, threaded)
            plain = await router.route("plain.test")
            assert plain.hosts == (Host("mx.plain.test", ("127.0.0.2",), MX_PORT, 10),)
            missing = await route_error(router, "missing.test")
            assert (missing.reply.code, missing.reply.enhanced) == (550, "5.1.2")
            assert {transport for _, _, transport in threaded.queries} == {"udp"}
            assert client.sent == len(threaded.queries)
            scope.cancel()  # the thread notices within a poll and the nursery ends
    assert scope.cancelled_caught


async def test_a_lost_reply_is_sent_again_after_the_timeout(
    nursery: trio.Nursery, server: DNSServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.add("lossy.test", "MX", "10 mx.lossy.test.")
    server.add("mx.lossy.test", "A", "127.0.0.4")
    server.drop("lossy.test", 2)
    router, client = await served_router(nursery, server, timeout=1.0, lifetime=10.0)
    start = trio.current_time()
    destination = await router.route("lossy.test")
    assert destination.key == "mx:mx.lossy.test"
    assert trio.current_time() - start == 2.0  # two timeouts, then the answer
    assert client.retransmits == 2
    assert server.queries.count(("lossy.test", "MX", "udp")) == 3


async def test_a_silent_server_fails_after_the_lifetime_not_before(
    nursery: trio.Nursery, server: DNSServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.blackhole("slow.test")
    router, client = await served_router(nursery, server, timeout=1.0, lifetime=3.5)
    start = trio.current_time()
    error = await route_error(router, "slow.test")
    assert trio.current_time() - start == 3.5
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert "no answer within 3.5s" in str(error.reply)
    assert client.retransmits == 3  # sent at 0, 1, 2 and 3 s


async def test_a_truncated_answer_is_asked_again_over_tcp(
    nursery: trio.Nursery, server: DNSServer
) -> None:
    server.add("big.test", "MX", "10 mx.big.test.")
    server.add("mx.big.test", "A", "127.0.0.5")
    server.force_truncation("big.test")
    router, _client = await served_router(nursery, server)
    destination = await router.route("big.test")
    assert [h.name for h in destination.hosts] == ["mx.big.test"]
    assert server.queries[:2] == [("big.test", "MX", "udp"), ("big.test", "MX", "tcp")]


async def test_replies_with_another_id_or_question_are_ignored(nursery: trio.Nursery) -> None:
    """A server that first sends a stray ID, a reply to another question and
    a query (no QR bit), then the answer: only the answer is taken."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def confused_server() -> None:
        with sock:
            while True:
                data, peer = await sock.recvfrom(65535)
                query = dns.message.from_wire(data)
                answer = dns.message.make_response(query)
                answer.answer.append(
                    dns.rrset.from_text("d.test.", 60, "IN", "MX", "10 mx.d.test.")
                )
                stray = dns.message.make_response(query)
                stray.id = (query.id + 1) % 65536
                other = dns.message.make_response(dns.message.make_query("e.test", "MX"))
                other.id = query.id
                for wire in (stray.to_wire(), other.to_wire(), data, answer.to_wire()):
                    await sock.sendto(wire, peer)

    nursery.start_soon(confused_server)
    lookup = DNSLookup(DNSConfig(nameservers=(("127.0.0.1", port),)))
    await nursery.start(lookup.serve)
    assert await lookup.query("d.test", "MX") == Records(((10, "mx.d.test"),), 60.0)
    assert lookup.client is not None and lookup.client.ignored == 3


async def test_a_refusing_server_is_left_to_dnspython_to_report(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there: ICMP port unreachable
    lookup = DNSLookup(DNSConfig(nameservers=(("127.0.0.1", port),), timeout=1, lifetime=3))
    await nursery.start(lookup.serve)
    with pytest.raises(RoutingError) as info:
        await lookup.query("d.test", "MX")
    assert (info.value.reply.code, info.value.reply.enhanced) == (451, "4.4.3")
    # the refusal woke the query at once: not resent into the void every second
    assert lookup.client is not None and (lookup.client.sent, lookup.client.retransmits) == (1, 0)


async def test_without_its_nursery_the_client_is_gone_and_lookups_still_work(
    server: DNSServer,
) -> None:
    server.add("later.test", "MX", "10 mx.later.test.")
    server.add("mx.later.test", "A", "127.0.0.6")
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=MX_PORT))
    async with trio.open_nursery() as owner:
        await owner.start(router.dns.serve)
        assert router.dns.client is not None
        owner.cancel_scope.cancel()
    assert router.dns.client is None
    assert (await router.route("later.test")).key == "mx:mx.later.test"  # a socket of its own


async def test_policy_lookups_go_over_the_shared_socket_with_the_ad_bit(
    nursery: trio.Nursery, server: DNSServer
) -> None:
    server.add("_mta-sts.signed.test", "TXT", '"v=STSv1; id=1"', ttl=120)
    server.authenticate("_mta-sts.signed.test")
    server.add("_mta-sts.plain.test", "TXT", '"v=STSv1; id=2"')
    server.add("_25._tcp.mx.big.test", "TLSA", "3 1 1 " + "ab" * 32)
    server.authenticate("_25._tcp.mx.big.test")
    server.force_truncation("_25._tcp.mx.big.test")
    server.set_rcode("_mta-sts.broken.test", dns.rcode.SERVFAIL)
    lookup = PolicyDNS(DNSConfig(nameservers=(("127.0.0.1", server.port),)))
    assert await nursery.start(lookup.serve) is True

    signed = await lookup.query("_mta-sts.signed.test", "TXT")
    assert signed.authenticated and signed.ttl == 120.0
    assert await lookup.txt("_mta-sts.plain.test") == (["v=STSv1; id=2"], 300.0)
    assert not (await lookup.query("_mta-sts.plain.test", "TXT")).authenticated
    missing = await lookup.query("_mta-sts.missing.test", "TXT")
    assert missing.rdata == () and not missing.authenticated
    tlsa = await lookup.query("_25._tcp.mx.big.test", "TLSA")  # truncated: TCP
    assert tlsa.authenticated and len(tlsa.rdata) == 1
    with pytest.raises(LookupFailed, match="SERVFAIL"):
        await lookup.query("_mta-sts.broken.test", "TXT")
    assert server.queries.count(("_25._tcp.mx.big.test", "TLSA", "tcp")) == 1
    assert {t for n, _, t in server.queries if n != "_25._tcp.mx.big.test"} == {"udp"}
    assert lookup.client is not None and lookup.client.sent == 6  # one each, no resolver


FEW_DESCRIPTORS_CLIENT = """
import json, sys, trio
from bulkmail.routing import DNSConfig, MXRouter

port, domains = int(sys.argv[1]), int(sys.argv[2])

async def main():
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", port),), max_queries=256))
    keys = set()

    async def one(n):
        keys.add((await router.route(f"d{n}.test")).key)

    async with trio.open_nursery() as service:
        await service.start(router.dns.serve)
        async with trio.open_nursery() as nursery:
            for n in range(domains):
                nursery.start_soon(one, n)
        service.cancel_scope.cancel()
    print(json.dumps({"keys": sorted(keys), "waits": router.dns.exhaustion_waits}))

trio.run(main)
"""


async def test_256_queries_in_flight_need_no_descriptor_each(server: DNSServer) -> None:
    """With 48 descriptors to spare a socket per query would meet EMFILE at
    once; over the shared socket 256 lookups in flight never do."""
    domains = 1_000
    for n in range(domains):
        server.add(f"d{n}.test", "MX", "10 mx.site.test.")
    server.add("mx.site.test", "A", "127.0.0.1")

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = await trio.run_process(
        [sys.executable, "-c", FEW_DESCRIPTORS_CLIENT, str(server.port), str(domains)],
        capture_stdout=True, capture_stderr=True, preexec_fn=few_descriptors, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads(proc.stdout) == {"keys": ["mx:mx.site.test"], "waits": 0}
