"""Many small jobs through one Mailer share a session's window.

A store worker sends each claim (one destination's recipients) as a job of
its own, so a long tail of one-recipient domains is hundreds of one-recipient
jobs at once.  A session's refill takes several jobs' transactions into one
write, and their in-doubt marks are awaited together, not one round trip (or
one commit) per transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from bulkmail import Mailer, MailerConfig, Recipient, Relay, TemplateContent
from bulkmail.results import Result
from bulkmail.shaping import PoolLimits

from .sinkutil import start_sink

TEMPLATE = TemplateContent("Subject: hello ${n}\r\n\r\nHello ${n}\r\n")
JOBS = 60


async def test_one_recipient_jobs_share_a_write_and_mark_together() -> None:
    in_flight = most_in_flight = marking = most_marking = delivered = 0

    async def in_doubt(addresses: Sequence[str]) -> None:
        nonlocal in_flight, most_in_flight, marking, most_marking
        marking += 1
        most_marking = max(most_marking, marking)
        await trio.sleep(0.002)  # a commit's round trip: the others mark meanwhile
        marking -= 1
        in_flight += len(addresses)
        most_in_flight = max(most_in_flight, in_flight)

    def on_results(results: Sequence[Result]) -> None:
        nonlocal in_flight, delivered
        in_flight -= len(results)
        delivered += sum(r.status.value == "delivered" for r in results)

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        config = MailerConfig(
            relay=Relay("127.0.0.1", sink.port), secure="none",
            limits=PoolLimits(connections=1), window=32, in_doubt_share=0.0,
        )
        async with Mailer(config) as mailer:

            async def one(i: int) -> None:
                await mailer.send(
                    "news@sender.test", TEMPLATE,
                    [Recipient(f"u{i}@example.test", {"n": str(i)})],
                    on_results=on_results, on_in_doubt=in_doubt,
                )

            async with trio.open_nursery() as jobs:
                for i in range(JOBS):
                    jobs.start_soon(one, i)
        nursery.cancel_scope.cancel()

    assert delivered == JOBS
    # one session, 60 jobs: a write carries several jobs' transactions (one
    # per round trip before), and their marks run at once
    assert most_in_flight >= 10
    assert most_marking >= 5
