"""How fast bulkmail's MX router resolves distinct domains against a loopback DNS server.

    python benchmarks/resolver_throughput.py [--domains 20000] [--mx-hosts 20]
                                             [--max-queries 16,64,256]

The DNS server (bulkmail.testing.dns_server, replaying built answers) runs in
its own process; the router runs here, resolving every domain once, all
submitted at once as a burst of recipients' domains would be.  Reported:
domains routed per second and DNS queries per second (one MX query per domain
plus A and AAAA once per MX host when the host cache works).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import trio

from bulkmail.routing import DNSConfig, MXRouter


async def resolve_all(port: int, domains: int, max_queries: int) -> tuple[float, int, int]:
    router = MXRouter(DNSConfig(nameservers=(("127.0.0.1", port),), max_queries=max_queries,
                                cache_size=max(domains, 1)))
    failures = 0

    async def one(n: int) -> None:
        nonlocal failures
        try:
            await router.route(f"d{n}.test")
        except Exception:
            failures += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n in range(domains):
            nursery.start_soon(one, n)
    return time.perf_counter() - start, router.dns.sent, failures


def measure(domains: int, mx_hosts: int, max_queries: int) -> dict[str, float]:
    dns = subprocess.Popen(
        [sys.executable, "-m", "bulkmail.testing.dns_server", "--domains", str(domains),
         "--mx-hosts", str(mx_hosts)], stdout=subprocess.PIPE)
    try:
        assert dns.stdout is not None
        port = int(dns.stdout.readline())
        seconds, queries, failures = trio.run(resolve_all, port, domains, max_queries)
    finally:
        dns.terminate()
        dns.wait(10)
    return {"domains": domains, "max_queries": max_queries, "seconds": seconds,
            "domains_per_s": domains / seconds, "queries_per_s": queries / seconds,
            "failures": failures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--domains", type=int, default=20_000)
    p.add_argument("--mx-hosts", type=int, default=20)
    p.add_argument("--max-queries", default="16,64,256")
    args = p.parse_args()
    for limit in (int(x) for x in args.max_queries.split(",")):
        r = measure(args.domains, args.mx_hosts, limit)
        print(f"  max_queries {limit:>4}: {r['domains']:,} domains in {r['seconds']:.2f} s ="
              f" {r['domains_per_s']:,.0f} domains/s, {r['queries_per_s']:,.0f} queries/s,"
              f" {r['failures']} failures", flush=True)


if __name__ == "__main__":
    main()
