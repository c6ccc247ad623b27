"""IP warm-up over real sockets: a cap per egress address and destination per
UTC day lets exactly that many through, holds the rest (deferred with the
reason, never bounced) until the next window opens on trio's virtual clock,
and its counters survive a restart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import trio

from bulkmail import Mailer, MailerConfig, Recipient, Relay, Status, TemplateContent
from bulkmail.results import Result, Summary
from bulkmail.shaping import Shaping, ShapingError
from bulkmail.sink import Sink, SinkConfig
from bulkmail.warmup import WarmupRule
from bulkmail.warmup_store import WarmupCounters

TEMPLATE = TemplateContent("Subject: ${name}\r\n\r\nHello ${name}.\r\n")
#: 20:00 UTC: the day's window closes four hours into a run
EVENING = datetime(2026, 11, 30, 20, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def people(n: int, prefix: str = "u") -> list[Recipient]:
    return [Recipient(f"{prefix}{i}@example.test", {"name": f"{prefix}{i}"}) for i in range(n)]


def clock_from(wall: float) -> Callable[[], float]:
    """A wall clock reading ``wall`` now and moving with trio's (virtual) clock."""
    start = trio.current_time()
    return lambda: wall + trio.current_time() - start


async def start_sink(nursery: trio.Nursery, **kwargs: object) -> Sink:
    sink = Sink(SinkConfig(**kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


def shaping(**rule: object) -> Shaping:
    return Shaping.from_mapping({"warmup": [{"destination": "example.test", **rule}]})


async def send(
    sink: Sink, recipients: list[Recipient], config_shaping: Shaping, wall: Callable[[], float],
    *, store: str | None = None, retry_for: float | None = None,
    on_result: Callable[[Result], None] | None = None, **limits: object,
) -> Summary:
    config = MailerConfig(
        relay=Relay("127.0.0.1", sink.port), secure="none", shaping=config_shaping,
        warmup_store=store, wall_clock=wall, retry_for=retry_for,
    )
    async with Mailer(config) as mailer:
        return await mailer.send("news@sender.test", TEMPLATE, recipients, on_result=on_result)


def test_schedules_grow_by_the_day_and_are_checked() -> None:
    doubling = WarmupRule("x", "day", first=500, growth=2.0, until=4000)
    assert [doubling.cap(d) for d in range(5)] == [500, 1000, 2000, None, None]
    listed = WarmupRule("x", "hour", caps=(50, 100))
    assert (listed.cap(0), listed.cap(1), listed.cap(2), listed.seconds) == (50, 100, None, 3600)
    rule = shaping(daily=[10, 20], sources=["192.0.2.1"], start=date(2026, 11, 30)).warmup[0]
    assert rule.caps == (10, 20) and rule.sources == ("192.0.2.1",) and rule.covers("192.0.2.1")
    assert not rule.covers("192.0.2.2")
    for bad, message in [
        ({"daily": 0}, "whole number >= 1"),
        ({"daily": 5, "hourly": 5}, "exactly one of daily, hourly"),
        ({"daily": [5, 10], "growth": 2}, "growth and until go with a single cap"),
        ({"daily": 5, "growth": 0.5}, "growth must be a number >= 1"),
        ({"daily": 5, "start": "monday"}, "start must be a date"),
        ({"daily": 5, "sources": "192.0.2.1"}, "sources must be an array"),
    ]:
        with pytest.raises(ShapingError, match=r"\[\[warmup\]\] #1: .*" + message):
            shaping(**bad)


async def test_a_daily_cap_lets_exactly_n_through_today_and_the_rest_tomorrow(
    autojump_clock: trio.abc.Clock,
) -> None:
    delivered_at: list[float] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        wall = clock_from(EVENING)

        def record(result: Result) -> None:
            if result.status is Status.DELIVERED:
                delivered_at.append(wall())

        summary = await send(sink, people(25), shaping(daily=10, growth=2), wall,
                             retry_for=2 * 86400, on_result=record)
        nursery.cancel_scope.cancel()
    assert summary.delivered == 25 and summary.bounced == 0
    today = [t for t in delivered_at if t < MIDNIGHT]
    assert len(today) == 10
    # day 2's cap is 20: the other 15 go as soon as the window opens
    tomorrow = [t for t in delivered_at if t >= MIDNIGHT]
    assert len(tomorrow) == 15 and max(tomorrow) < MIDNIGHT + 60
    assert sink.stats.recipients == 25


async def test_past_the_cap_recipients_end_deferred_with_the_reason_never_bounced(
    autojump_clock: trio.abc.Clock,
) -> None:
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        summary = await send(sink, people(25), shaping(daily=10), clock_from(EVENING),
                             retry_for=3600, on_result=results.append)
        nursery.cancel_scope.cancel()
    assert (summary.delivered, summary.deferred, summary.bounced) == (10, 15, 0)
    deferred = [r for r in results if r.status is Status.DEFERRED]
    assert {str(r.reply) for r in deferred} == {
        "451 4.7.0 warm-up cap for example.test from default reached (10/day);"
        " next window 2026-12-01T00:00:00Z"
    }
    assert all(r.attempts == 0 for r in deferred)  # held, no attempt spent
    assert sink.stats.recipients == 10


async def test_counters_survive_a_restart(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    store = str(tmp_path / "warmup.sqlite")
    rules = shaping(daily=10, growth=2)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        wall = clock_from(EVENING)
        first = await send(sink, people(6, "a"), rules, wall, store=store, retry_for=60)
        # a new Mailer (a restart) the same evening: 4 left of today's 10
        second = await send(sink, people(10, "b"), rules, wall, store=store, retry_for=60)
        # the next day is day 2 of the schedule (recorded on day 1): 20
        tomorrow = clock_from(MIDNIGHT + 3600)
        third = await send(sink, people(30, "c"), rules, tomorrow, store=store, retry_for=60)
        nursery.cancel_scope.cancel()
    assert (first.delivered, second.delivered, second.deferred) == (6, 4, 6)
    assert (third.delivered, third.deferred) == (20, 10)
    counters = WarmupCounters(store)
    try:
        day = int(EVENING // 86400) * 86400
        assert counters.sent("default", "example.test", day) == 10
        assert counters.first_day("default", "example.test", date(2027, 1, 1)) == date(2026, 11, 30)
    finally:
        counters.close()


async def test_each_source_address_has_its_own_cap(autojump_clock: trio.abc.Clock) -> None:
    """Two egress addresses, the schedule on one of them: the new IP stops at
    its cap and the warmed-up one carries the rest."""
    rules = Shaping.from_mapping({
        "default": {"source_addresses": ["127.0.0.5", "127.0.0.6"], "connections": 2},
        "warmup": [{"destination": "example.test", "sources": ["127.0.0.6"], "daily": 5}],
    })
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        summary = await send(sink, people(40), rules, clock_from(EVENING), retry_for=60)
        nursery.cancel_scope.cancel()
    assert summary.delivered == 40
    by_peer = Counter(m.peer for m in sink.messages for _ in m.rcpts)
    assert by_peer == {"127.0.0.6": 5, "127.0.0.5": 35}
