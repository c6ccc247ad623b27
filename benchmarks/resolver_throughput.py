"""How fast bulkmail's MX router resolves distinct domains against a loopback DNS server.

    python benchmarks/resolver_throughput.py [--domains 20000] [--mx-hosts 20]
                                             [--max-queries 16,64,256]
                                             [--socket-per-query]

The DNS server (bulkmail.testing.dns_server, replaying built answers) runs in
its own process; the router runs here, resolving every domain once, all
submitted at once as a burst of recipients' domains would be.  Reported:
domains routed per second and DNS queries per second (one MX query per domain
plus A and AAAA once per MX host when the host cache works).  The router's
shared UDP sockets run as in the engine (``DNSLookup.serve`` in the nursery);
``--socket-per-query`` leaves them out: every query opens its own, as before.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

from bulkmail.routing import DNSConfig, MXRouter


async def resolve_all(
    port: int, domains: int, max_queries: int, shared: bool
) -> tuple[float, float, int, int]:
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", port),), max_queries=max_queries,
                                cache_size=max(domains, 1)))
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(domains: int, mx_hosts: int, max_queries: int, shared: bool) -> dict[str, float]:
    dns = subprocess.Popen(
        [sys.executable, "-m", "bulkmail.testing.dns_server", "--domains", str(domains),
         "--mx-hosts", str(mx_hosts)], stdout=subprocess.PIPE)
    try:
        assert dns.stdout is not None
        port = int(dns.stdout.readline())
        server_cpu = _cpu_seconds(dns.pid)
        seconds, cpu, queries, failures = trio.run(resolve_all, port, domains, max_queries, shared)
        server_cpu = _cpu_seconds(dns.pid) - server_cpu
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
    args = p.parse_args()
    for limit in (int(x) for x in args.max_queries.split(",")):
        r = measure(args.domains, args.mx_hosts, limit, not args.socket_per_query)
        print(f"  max_queries {limit:>4}: {r['domains']:,} domains in {r['seconds']:.2f} s ="
              f" {r['domains_per_s']:,.0f} domains/s, {r['queries_per_s']:,.0f} queries/s,"
              f" CPU per query {r['cpu_us_per_query']:.0f} us here,"
              f" {r['server_us_per_query']:.0f} us in the DNS server,"
              f" {r['failures']} failures", flush=True)


if __name__ == "__main__":
    main()
