"""How fast bulkmail's MX router resolves distinct domains against a loopback DNS server.

    python benchmarks/resolver_throughput.py [--domains 20000] [--mx-hosts 20]
                                             [--max-queries 16,64,256]
                                             [--socket-per-query] [--ahead]

The DNS server (bulkmail.testing.dns_server, replaying built answers) runs in
its own process; the router runs here, resolving every domain once, all
submitted at once as a burst of recipients' domains would be.  Reported:
domains routed per second and DNS queries per second (one MX query per domain
plus A and AAAA once per MX host when the host cache works).  The router's
shared UDP sockets run as in the engine (``DNSLookup.serve`` in the nursery);
``--socket-per-query`` leaves them out: every query opens its own, as before;
``--ahead`` queues the domains for the router's prefetcher instead (one
window of queries, no task per domain), as the engine resolves them.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time

import trio
from loopback_mx import process_cpu_seconds

from bulkmail.routing import DNSConfig, MXRouter


async def resolve_all(
    port: int, domains: int, max_queries: int, shared: bool, ahead: bool = False
) -> tuple[float, float, int, int]:
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", port),), max_queries=max_queries,
                                cache_size=max(domains, 1)))
    if ahead:
        return await resolve_ahead(router, domains)
    failures = 0

    async def one(n: int) -> None:
        nonlocal failures
        try:
            await router.route(f"d{n}.test")
        except Exception:
            failures += 1

    async with trio.open_nursery() as service:
        if shared:
            await service.start(router.dns.serve)
        start, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for n in range(domains):
                nursery.start_soon(one, n)
        service.cancel_scope.cancel()
    return time.perf_counter() - start, time.process_time() - cpu, router.dns.sent, failures


async def resolve_ahead(router: MXRouter, domains: int) -> tuple[float, float, int, int]:
    """Every domain queued for the router's prefetcher, as the engine does."""
    done = trio.Event()
    outcomes: dict[str, object] = {}

    def resolved(domain: str, outcome: object) -> None:
        outcomes[domain] = outcome
        if len(outcomes) == domains:
            done.set()

    async with trio.open_nursery() as service:
        service.start_soon(router.run_prefetcher, resolved)
        await trio.sleep(0.1)  # the shared sockets open
        start, cpu = time.perf_counter(), time.process_time()
        for n in range(domains):
            while not router.prefetch(f"d{n}.test"):
                await trio.sleep(0.001)  # the queue is full
        await done.wait()
        service.cancel_scope.cancel()
    failures = sum(isinstance(o, Exception) for o in outcomes.values())
    return time.perf_counter() - start, time.process_time() - cpu, router.dns.sent, failures


def measure(
    domains: int, mx_hosts: int, max_queries: int, shared: bool, ahead: bool = False
) -> dict[str, float]:
    dns = subprocess.Popen(
        [sys.executable, "-m", "bulkmail.testing.dns_server", "--domains", str(domains),
         "--mx-hosts", str(mx_hosts)], stdout=subprocess.PIPE)
    try:
        assert dns.stdout is not None
        port = int(dns.stdout.readline())
        server_cpu = process_cpu_seconds(dns.pid)
        seconds, cpu, queries, failures = trio.run(
            resolve_all, port, domains, max_queries, shared, ahead)
        server_cpu = process_cpu_seconds(dns.pid) - server_cpu
    finally:
        dns.terminate()
        dns.wait(10)
    return {"domains": domains, "max_queries": max_queries, "seconds": seconds,
            "domains_per_s": domains / seconds,
            "cpu_us_per_query": cpu / max(queries, 1) * 1e6,
            "server_us_per_query": server_cpu / max(queries, 1) * 1e6,
            "queries_per_s": queries / seconds,
            "failures": failures}


def main() -> None:
    # as the CLI does for a run (bulkmail/cli/__init__.py): with 20,000 tasks
    # alive the default thresholds spend ~40% of the time in the collector
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--domains", type=int, default=20_000)
    p.add_argument("--mx-hosts", type=int, default=20)
    p.add_argument("--max-queries", default="16,64,256")
    p.add_argument("--socket-per-query", action="store_true",
                   help="no shared UDP sockets: a socket per query (the old way)")
    p.add_argument("--ahead", action="store_true",
                   help="through the prefetcher (one window of queries), as the engine resolves")
    args = p.parse_args()
    for limit in (int(x) for x in args.max_queries.split(",")):
        r = measure(args.domains, args.mx_hosts, limit, not args.socket_per_query, args.ahead)
        print(f"  max_queries {limit:>4}: {r['domains']:,} domains in {r['seconds']:.2f} s ="
              f" {r['domains_per_s']:,.0f} domains/s, {r['queries_per_s']:,.0f} queries/s,"
              f" CPU per query {r['cpu_us_per_query']:.0f} us here,"
              f" {r['server_us_per_query']:.0f} us in the DNS server,"
              f" {r['failures']} failures", flush=True)


if __name__ == "__main__":
    main()
