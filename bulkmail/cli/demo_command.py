"""``bulkmail demo``: a newsletter to generated recipients, delivered to the built-in sink.

The README's first command runs this: it proves the install works end to end
(templated message, batching across domains, pooled pipelined sessions) on any
machine, touching nothing but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import time

import trio

from ..api import Mailer, MailerConfig, Relay
from ..message import Recipient, TemplateContent
from ..results import Summary
from ..shaping import PoolLimits
from ..sink import Sink, SinkConfig
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipients", type=int, default=5000, help="how many (default 5000)")
    parser.add_argument("--domains", type=int, default=50, help="spread over this many domains")
    parser.add_argument("--connections", type=int, default=10)


def recipients(count: int, domains: int) -> list[Recipient]:
    return [
        Recipient(f"reader{n}@domain{n % domains}.test", {"name": f"Reader {n}"})
        for n in range(count)
    ]


async def demo(count: int, domains: int, connections: int) -> tuple[Summary, dict[str, int]]:
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
    return summary, {
        "sessions": stats.sessions, "messages": stats.messages, "recipients": stats.recipients
    }


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    summary, stats = trio.run(demo, args.recipients, args.domains, args.connections)
    elapsed = time.perf_counter() - started
    print(render_summary(summary))
    print(
        f"sink received {stats['messages']} messages for {stats['recipients']} recipients"
        f" over {stats['sessions']} sessions in {elapsed:.2f}s"
        f" ({summary.delivered / elapsed:,.0f} messages/s)"
    )
    ok = summary.delivered == args.recipients == stats["recipients"]
    if not ok:
        print("demo: not every recipient was delivered", file=sys.stderr)
    return 0 if ok else 1
