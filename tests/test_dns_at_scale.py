"""DNS for many domains: bounded queries, shared MX host lookups, resolving
ahead, and local descriptor exhaustion told apart from a DNS failure."""

from __future__ import annotations

import json
import random
import resource
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing

from bulkmail.routing import Destination, DNSConfig, MXRouter, RoutingError
from bulkmail.sink import Sink, SinkConfig

from .dnsserver import DNSServer

BULKMAIL = [sys.executable, "-m", "bulkmail"]


async def start_dns(nursery: trio.Nursery) -> DNSServer:
    server = DNSServer()
    await nursery.start(server.serve)
    return server


def router_for(server: DNSServer, **config: Any) -> MXRouter:
    return MXRouter(
        DNSConfig(nameservers=(("127.0.0.1", server.port),), mx_port=2525, **config),
        rng=random.Random(1),
    )


async def test_queries_in_flight_never_exceed_max_queries() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_dns(nursery)
        for n in range(50):
            server.add(f"d{n}.test", "MX", "10 mx.site.test.")
            server.blackhole(f"d{n}.test")  # every query stays in flight
        router = router_for(server, max_queries=4)
        for n in range(50):
            nursery.start_soon(router.route, f"d{n}.test")
        await trio.testing.wait_all_tasks_blocked()
        assert router.dns.in_flight == 4
        assert len(server.queries) == 4  # the other 46 wait their turn, unsent
        nursery.cancel_scope.cancel()


async def test_domains_of_one_site_share_its_host_lookup_and_destination() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_dns(nursery)
        for n in range(100):
            server.add(f"d{n}.test", "MX", "10 mx.site.test.")
        server.add("mx.site.test", "A", "127.0.0.1")
        router = router_for(server)
        found: list[Destination] = []

        async def route(domain: str) -> None:
            found.append(await router.route(domain))

        async with trio.open_nursery() as burst:
            for n in range(100):
                burst.start_soon(route, f"d{n}.test")
        nursery.cancel_scope.cancel()
    assert Counter(rdtype for _, rdtype, _ in server.queries) == {"MX": 100, "A": 1, "AAAA": 1}
    assert len(found) == 100 and all(d is found[0] for d in found)
    assert found[0].key == "mx:mx.site.test"


async def test_prefetched_domains_are_resolved_before_anyone_asks() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_dns(nursery)
        for n in range(20):
            server.add(f"d{n}.test", "MX", "10 mx.site.test.")
        server.add("mx.site.test", "A", "127.0.0.1")
        router = router_for(server, prefetch_queue=15)
        queued = [router.prefetch(f"d{n}.test") for n in range(19)]
        queued.append(router.prefetch("gone.test"))  # NXDOMAIN
        assert queued == [True] * 15 + [False] * 5  # the queue is bounded
        assert router.prefetch("D0.test.") is True  # already queued: it will be reported
        assert router.peek("d0.test") is None
        reported: dict[str, Destination | RoutingError] = {}
        nursery.start_soon(router.run_prefetcher, lambda d, o: reported.setdefault(d, o))
        while len(reported) < 15:
            await trio.sleep(0.01)
        assert sorted(reported) == sorted(f"d{n}.test" for n in range(15))
        for n in range(15):
            outcome = reported[f"d{n}.test"]
            assert isinstance(outcome, Destination) and outcome.key == "mx:mx.site.test"
            assert router.peek(f"d{n}.test") is outcome
        assert router.peek("d15.test") is None  # never queued: nobody resolved it
        assert router.prefetch("d3.test") is False  # cached: peek has it
        assert router.prefetch("gone.test") is True  # room again
        while "gone.test" not in reported:
            await trio.sleep(0.01)
        failure = reported["gone.test"]
        assert isinstance(failure, RoutingError) and failure.reply.code == 550
        before = len(server.queries)
        await router.route("d3.test")
        assert len(server.queries) == before  # the route came from the cache
        nursery.cancel_scope.cancel()


EXHAUSTED_CLIENT = """
import json, os, sys, trio
from bulkmail.routing import DNSConfig, MXRouter, RoutingError

port, hold, patience = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])

async def main():
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", port),), timeout=2, lifetime=4,
                                exhaustion_patience=patience))
    fillers = []
    try:
        while True:  # take every descriptor this process may still open
            fillers.append(os.dup(0))
    except OSError:
        pass
    out = {}

    async def release():
        if hold >= 0:
            await trio.sleep(hold)
            for fd in fillers:
                os.close(fd)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release)
        try:
            out["key"] = (await router.route("exhausted.test")).key
        except RoutingError as exc:
            out["code"], out["text"] = exc.reply.code, str(exc.reply)
        nursery.cancel_scope.cancel()
    out["waits"] = router.dns.exhaustion_waits
    print(json.dumps(out))

trio.run(main)
"""


async def run_exhausted(server: DNSServer, hold: float, patience: float) -> dict[str, Any]:
    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = await trio.run_process(
        [sys.executable, "-c", EXHAUSTED_CLIENT, str(server.port), str(hold), str(patience)],
        capture_stdout=True, capture_stderr=True, preexec_fn=low_fd_limit,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def test_descriptor_exhaustion_waits_and_the_lookup_is_sent_again() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_dns(nursery)
        server.add("exhausted.test", "MX", "10 mx.exhausted.test.")
        server.add("mx.exhausted.test", "A", "127.0.0.1")
        result = await run_exhausted(server, hold=0.3, patience=60)
        nursery.cancel_scope.cancel()
    assert result["waits"] > 0  # it met EMFILE ...
    assert result == {"key": "mx:mx.exhausted.test", "waits": result["waits"]}  # ... and routed


async def test_lasting_exhaustion_is_reported_as_what_it_is() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_dns(nursery)
        server.add("exhausted.test", "MX", "10 mx.exhausted.test.")
        result = await run_exhausted(server, hold=-1, patience=0.3)
        nursery.cancel_scope.cancel()
    assert result["code"] == 451
    assert result["text"].startswith("451 4.3.0 local resource exhaustion")
    assert "Too many open files" in result["text"] and "EMFILE" in result["text"]
    assert "nameservers" not in result["text"]
    assert server.queries == []  # nothing was sent: the DNS is not to blame


async def test_burst_of_20000_domains_at_1024_descriptors_delivers_all_first_time(
    tmp_path: Path,
) -> None:
    """Every domain resolved at once by the CLI with a 1,024-descriptor limit
    (issue 16 item 6, issue 22): nobody is deferred for our own shortage."""
    domains = 20_000
    rcpts = tmp_path / "rcpts.txt"
    rcpts.write_text("".join(f"r{n}@d{n}.test\n" for n in range(domains)))
    message = tmp_path / "msg.eml"
    message.write_text("From: news@sender.test\nSubject: burst\n\nHello.\n")

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    async with trio.open_nursery() as nursery:
        server = await start_dns(nursery)
        server.log_queries = False
        for n in range(domains):
            server.add(f"d{n}.test", "MX", "10 mx.site.test.")
        server.add("mx.site.test", "A", "127.0.0.1")
        sink = Sink(SinkConfig())
        await nursery.start(sink.serve)
        proc = await trio.run_process(
            [*BULKMAIL, "send", "--sender", "news@sender.test", "--recipients", str(rcpts),
             "--message", str(message), "--tls", "none", "--quiet",
             "--dns-server", f"127.0.0.1:{server.port}", "--mx-port", str(sink.port),
             "--journal", str(tmp_path / "journal.sqlite"),
             "--report", str(tmp_path / "report.jsonl")],
            cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
            preexec_fn=low_fd_limit,
        )
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    results = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert len(results) == domains
    assert Counter((r["status"], r["attempts"]) for r in results) == {("delivered", 1): domains}
    assert sink.stats.recipients == domains
