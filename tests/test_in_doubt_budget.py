"""The in-doubt budget: BDAT sessions together keep at most a share of the
recipients admitted so far past their end of data, which bounds what a crash
duplicates (issue 15), while a big list still earns the whole window -- and
so does a long-lived Mailer sending many small lists (a store worker's
claims), whose transactions share a session's writes."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from bulkmail import Mailer, MailerConfig, Recipient, Relay, TemplateContent
from bulkmail.delivery.engine import MIN_WRITE_AHEAD
from bulkmail.results import Result
from bulkmail.shaping import PoolLimits

from .sinkutil import start_sink

TEMPLATE = TemplateContent("Subject: issue ${n}\r\n\r\nHello ${n}\r\n")
CONNECTIONS = 3


class Watch:
    """An in-doubt hook and a result callback that count the recipients marked
    in doubt without a result yet (``most``: at once), the hooks running at
    once (``most_marking``) and the deliveries."""

    def __init__(self, mark_time: float = 0.0) -> None:
        self.mark_time = mark_time  #: a commit's round trip, for the hook to take
        self.in_flight = self.most = self.marking = self.most_marking = self.delivered = 0

    async def in_doubt(self, addresses: Sequence[str]) -> None:
        self.marking += 1
        self.most_marking = max(self.most_marking, self.marking)
        if self.mark_time:
            await trio.sleep(self.mark_time)
        self.marking -= 1
        self.in_flight += len(addresses)
        self.most = max(self.most, self.in_flight)

    def on_results(self, results: Sequence[Result]) -> None:
        self.in_flight -= len(results)
        self.delivered += sum(r.status.value == "delivered" for r in results)


def _config(port: int, connections: int, share: float) -> MailerConfig:
    return MailerConfig(
        relay=Relay("127.0.0.1", port), secure="none",
        limits=PoolLimits(connections=connections), window=32, in_doubt_share=share,
    )


async def _most_in_flight(recipients: int, share: float, lists: int = 1) -> tuple[int, int]:
    """Send one personalised message per recipient over BDAT with a 10 ms round
    trip (``lists`` lists of ``recipients``, one after another, through one
    Mailer); the most recipients ever marked in doubt without a result yet in
    the last list, and how many were delivered in all."""
    watch = Watch()
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.01)
        async with Mailer(_config(sink.port, CONNECTIONS, share)) as mailer:
            for n in range(lists):
                watch.most = 0
                await mailer.send(
                    "news@sender.test", TEMPLATE,
                    [Recipient(f"u{i}.{n}@example.test", {"n": str(i)})
                     for i in range(recipients)],
                    on_results=watch.on_results, on_in_doubt=watch.in_doubt,
                )
        nursery.cancel_scope.cancel()
    return watch.most, watch.delivered


async def test_a_small_list_keeps_its_in_doubt_recipients_within_the_budget() -> None:
    # 1% of 600 is 6: two per session, the floor, however long the window
    most, delivered = await _most_in_flight(600, 0.01)
    assert delivered == 600
    assert most <= CONNECTIONS * MIN_WRITE_AHEAD


async def test_without_a_budget_the_window_alone_bounds_what_is_in_flight() -> None:
    most, delivered = await _most_in_flight(600, 0.0)
    assert delivered == 600
    assert most > CONNECTIONS * MIN_WRITE_AHEAD  # (the sessions write far ahead)


async def test_a_big_list_earns_a_wider_window_as_it_is_read() -> None:
    # 10% of 3,000 allows 100 per session by the end: past the floor
    most, delivered = await _most_in_flight(3000, 0.1)
    assert delivered == 3000
    assert most > CONNECTIONS * MIN_WRITE_AHEAD


async def test_a_long_lived_mailer_earns_its_window_from_every_list_it_sent() -> None:
    # a worker sends each claim as a list of its own: 1% of one list of 150 is
    # the floor, but by the last of 20 the mailer has admitted 3,000 (30, 10
    # per session); counting only the lists in flight kept a worker at the
    # floor-ish window for ever (scenario e: 1,300/s -> 3,263/s, one worker)
    most, delivered = await _most_in_flight(150, 0.01, lists=20)
    assert delivered == 3000
    assert CONNECTIONS * MIN_WRITE_AHEAD < most <= 30


async def test_one_recipient_jobs_share_a_write_and_mark_together() -> None:
    # a store worker sends each claim (one destination's recipients) as a job
    # of its own: a long tail is many one-recipient jobs at once.  One
    # session's write carries several of them (one per round trip before),
    # and their marks run at once (one commit after another before)
    watch = Watch(mark_time=0.002)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        async with Mailer(_config(sink.port, 1, 0.0)) as mailer:

            async def one(i: int) -> None:
                await mailer.send(
                    "news@sender.test", TEMPLATE,
                    [Recipient(f"u{i}@example.test", {"n": str(i)})],
                    on_results=watch.on_results, on_in_doubt=watch.in_doubt,
                )

            async with trio.open_nursery() as jobs:
                for i in range(60):
                    jobs.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert watch.delivered == 60
    assert watch.most >= 10
    assert watch.most_marking >= 5
