"""``bulkmail demo``: a newsletter to generated recipients, delivered to the built-in sink.

The README's first command runs this: it proves the install works end to end
(templated message, batching across domains, pooled pipelined sessions) on any
machine, touching nothing but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import trio

from ..api import Mailer, MailerConfig, Relay
from ..message import Recipient, TemplateContent
from ..results import Summary
from ..shaping import PoolLimits
from ..sink import Sink, SinkConfig
from .options import at_least
from .summary import render_summary

NEWSLETTER = """\
From: Demo Newsletter <news@bulkmail.test>
To: ${name} <${email}>
Subject: Hello ${name}, your November digest
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hi ${name},

This is issue 42 of the demo newsletter, rendered just for you.
.A line starting with a dot survives dot-stuffing.

-- The bulkmail demo
"""


EXAMPLE = """\
example:
  bulkmail demo                       # 5,000 recipients over 50 domains
  bulkmail demo --recipients 100000 --connections 20
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipients", type=at_least(1), default=5000, metavar="N",
                        help="how many generated recipients (default 5000)")
    parser.add_argument("--domains", type=at_least(1), default=50, metavar="N",
                        help="spread over this many domains (default 50)")
    parser.add_argument("--connections", type=at_least(1), default=10, metavar="N",
                        help="connections per destination (default 10)")


def recipients(count: int, domains: int) -> list[Recipient]:
    return [
        Recipient(f"reader{n}@domain{n % domains}.test", {"name": f"Reader {n}"})
        for n in range(count)
    ]


@dataclass(frozen=True, slots=True)
class DemoRun:
    """What the demo did and what the sink saw, for the report."""

    summary: Summary
    port: int
    sessions: int
    messages: int
    recipients: int


async def demo(count: int, domains: int, connections: int) -> DemoRun:
    sink = Sink(SinkConfig())
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sink.serve)
        config = MailerConfig(
            relay=Relay("127.0.0.1", port),
            secure="none",
            limits=PoolLimits(connections=connections),
        )
        async with Mailer(config) as mailer:
            summary = await mailer.send(
                "news@bulkmail.test",
                TemplateContent(NEWSLETTER),
                recipients(count, domains),
            )
        nursery.cancel_scope.cancel()
    stats = sink.stats
    return DemoRun(summary, port, stats.sessions, stats.messages, stats.recipients)


def describe(args: argparse.Namespace, port: int) -> str:
    """What the demo did, in words: the numbers below are about this."""
    domains = min(args.domains, args.recipients)
    return (
        f"bulkmail demo: sent a templated newsletter (\"Hello ${{name}}, your November"
        f" digest\") to {args.recipients:,} generated recipients at {domains:,} domains\n"
        f"(reader<N>@domain<K>.test), one personalised message each, over up to"
        f" {args.connections} pipelined connections\n"
        f"to the built-in SMTP sink on 127.0.0.1:{port}: nothing left this machine."
    )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    result = trio.run(demo, args.recipients, args.domains, args.connections)
    elapsed = time.perf_counter() - started
    summary = result.summary
    summary.domains.clear()  # an even spread by construction: a top-domains line says nothing
    print(describe(args, result.port))
    print(render_summary(summary))
    print(
        f"sink received {result.messages:,} messages for {result.recipients:,} recipients"
        f" over {result.sessions:,} SMTP sessions in {elapsed:.2f}s"
        f" ({summary.delivered / elapsed:,.0f} recipients/s)"
    )
    ok = summary.delivered == args.recipients == result.recipients
    if not ok:
        print("demo: not every recipient was delivered", file=sys.stderr)
    return 0 if ok else 1
