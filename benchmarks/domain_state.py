"""Memory kept per seen-and-finished domain (issue 22 item 1), by tracemalloc.

    python benchmarks/domain_state.py [--domains 10000] [--batch-by domain|site]

One Mailer sends one recipient to each of N domains (direct to MX through
the loopback DNS server, one sink, all in this process); when every pool has
gone idle, the memory still held by the client (the sink's and the DNS
server's own allocations are filtered out) is compared with a snapshot taken
after a warm-up send, and divided by N.  Printed: the total and the files
holding it.  What remains is the router's TTL caches (bounded by
``DNSConfig.cache_size``) and intake's per-domain facts (bounded by
``MAX_INTAKE_DOMAINS``); pools, health, resolving lists and queues are gone.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

import trio

from bulkmail import MailerConfig
from bulkmail.api import Mailer
from bulkmail.routing import DNSConfig
from bulkmail.shaping import PoolLimits
from bulkmail.sink import Sink, SinkConfig
from bulkmail.testing.dns_server import DNSServer
from bulkmail.tls_policy.settings import TLSPolicyConfig

MESSAGE = b"From: news@sender.test\r\nSubject: tail\r\n\r\nHello.\r\n"
EXCLUDE = ("*/bulkmail/sink/*", "*/bulkmail/testing/*", "*/tracemalloc.py", "*/trio/*")


def held(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.Filter(False, p) for p in EXCLUDE])


async def measure(domains: int, batch_by: str) -> None:
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig())
        await nursery.start(sink.serve)
        dns = DNSServer()
        dns.log_queries = False
        await nursery.start(dns.serve)
        dns.add("mx.site.test", "A", "127.0.0.1")
        for n in range(domains + 1):
            dns.add(f"d{n}.test", "MX", "10 mx.site.test.")
        config = MailerConfig(
            dns=DNSConfig(nameservers=(("127.0.0.1", dns.port),), mx_port=sink.port),
            secure="none", tls_policy=TLSPolicyConfig(policy="opportunistic"),
            limits=PoolLimits(idle_timeout=0.05), batch_by=batch_by,  # type: ignore[arg-type]
        )
        async with Mailer(config) as mailer:
            engine = mailer.engine

            async def idle() -> None:
                while engine.pools:
                    await trio.sleep(0.05)

            await mailer.send("news@sender.test", MESSAGE, [f"w@d{domains}.test"])
            await idle()
            gc.collect()
            before = held(tracemalloc.take_snapshot())
            summary = await mailer.send(
                "news@sender.test", MESSAGE, [f"u@d{n}.test" for n in range(domains)]
            )
            assert summary.delivered == domains, summary
            del summary  # the caller's (its per-domain counts), not the engine's
            await idle()
            gc.collect()
            after = held(tracemalloc.take_snapshot())
            print(f"after the run: {len(engine.pools)} pools, {len(engine._health)} health"
                  f" entries, {len(engine._resolving)} domains resolving")
        nursery.cancel_scope.cancel()
    stats = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in stats)
    print(f"{domains:,} domains, batch by {batch_by}: {total / 1024:,.0f} KiB kept,"
          f" {total / domains:,.0f} bytes per finished domain")
    for s in stats[:8]:
        if s.size_diff:
            print(f"  {s.size_diff / domains:8,.1f} B/domain  {s.traceback[0].filename}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--domains", type=int, default=10_000)
    p.add_argument("--batch-by", choices=("domain", "site"), default="domain")
    args = p.parse_args()
    tracemalloc.start()
    trio.run(measure, args.domains, args.batch_by)


if __name__ == "__main__":
    main()
