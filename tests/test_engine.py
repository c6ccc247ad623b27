"""The delivery engine over real sockets: relay and MX routing, pools, batching,
caps, shaping and source addresses -- against the project's sink and aiosmtpd,
with DNS from a server on loopback started by each test."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)

import pytest
import trio

from bulkmail import Mailer, MailerConfig, Recipient, Relay, Status, TemplateContent
from bulkmail.api import send
from bulkmail.delivery import intake as intake_module
from bulkmail.message import StaticContent
from bulkmail.results import Result, Summary
from bulkmail.routing import DNSConfig
from bulkmail.shaping import PoolLimits, Shaping
from bulkmail.sink import Sink, SinkConfig

from .aiosmtpd_util import aiosmtpd_server
from .dnsserver import DNSServer

MESSAGE = b"From: news@sender.test\r\nSubject: monthly\r\n\r\nHello.\r\n"


async def start_sink(nursery: trio.Nursery, **kwargs: object) -> Sink:
    sink = Sink(SinkConfig(**kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


def relay_config(sink: Sink, **kwargs: object) -> MailerConfig:
    return MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none", **kwargs)  # type: ignore[arg-type]


async def test_batched_newsletter_arrives_in_ceil_n_over_k_transactions() -> None:
    n, k = 1234, 50
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        results: list[Result] = []
        summary = await send(
            "news@sender.test",
            MESSAGE,
            [f"user{i}@example.test" for i in range(n)],
            config=relay_config(sink, limits=PoolLimits(connections=4, max_rcpts=k)),
            on_result=results.append,
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == n and summary.total == n
    assert len(results) == n and {r.status for r in results} == {Status.DELIVERED}
    assert sink.stats.recipients == n
    assert sink.stats.messages == math.ceil(n / k)


async def test_personalised_messages_one_per_transaction_with_their_own_content() -> None:
    template = TemplateContent("Subject: hi ${name}\r\n\r\nDear ${name},\r\n")
    recipients = [Recipient(f"u{i}@example.test", {"name": f"N{i}"}) for i in range(40)]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        summary = await send("news@sender.test", template, recipients, config=relay_config(sink))
        nursery.cancel_scope.cancel()
    assert summary.delivered == 40
    assert sink.stats.messages == 40
    bodies = {tuple(m.rcpts): m.content for m in sink.messages}
    assert bodies[("u7@example.test",)] == b"Subject: hi N7\r\n\r\nDear N7,\r\n"


async def test_results_async_iterator_and_duplicates_sent_once() -> None:
    recipients = ["a@example.test", "b@example.test", "a@EXAMPLE.test", "not-an-address"]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        async with (
            Mailer(relay_config(sink)) as mailer,
            mailer.results("news@sender.test", MESSAGE, recipients) as results,
        ):
            got = [r async for r in results]
        nursery.cancel_scope.cancel()
    by_address = {r.recipient: r for r in got}
    assert len(got) == 3  # the duplicate is dropped
    assert by_address["a@example.test"].status is Status.DELIVERED
    assert by_address["a@example.test"].host == "127.0.0.1"
    invalid = by_address["not-an-address"]
    assert invalid.status is Status.BOUNCED and invalid.code == 553
    assert "@" in (invalid.text or "")
    assert sink.stats.recipients == 2


async def test_intake_domain_memory_starting_over_loses_no_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-domain intake facts are bounded: with room for two domains among
    five, dedupe (domain case-insensitive), validation and routing still hold."""
    monkeypatch.setattr(intake_module, "MAX_INTAKE_DOMAINS", 2)
    recipients = [
        "a@d1.test", "a@D1.TEST", "b@d2.test", "c@d3.test", "a@d1.test.", "c@D3.test",
        "d@d4.test", "dotted..local@d4.test", "e@-d5.test", "f@d5.test", "no-at-all", "b@d2.test",
    ]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        got: list[Result] = []
        summary = await send(
            "news@sender.test", MESSAGE, recipients, config=relay_config(sink),
            on_result=got.append,
        )
        nursery.cancel_scope.cancel()
    statuses = {r.recipient: r.status for r in got}
    assert len(got) == len(statuses) == 9  # a@D1.TEST, c@D3.test, b@d2.test: duplicates
    bounced = {a for a, s in statuses.items() if s is Status.BOUNCED}
    assert bounced == {"a@d1.test.", "e@-d5.test", "no-at-all"}  # what validation refuses
    assert summary.delivered == sink.stats.recipients == 6


async def test_async_iterable_of_recipients_streams_through() -> None:
    async def recipients():
        for i in range(300):
            yield f"r{i}@example.test"
            if i % 50 == 0:
                await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        summary = await send(
            "news@sender.test", MESSAGE, recipients(),
            config=relay_config(sink, max_pending=64),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 300
    assert sink.stats.recipients == 300


async def test_a_plain_list_never_holds_more_than_max_pending() -> None:
    """Intake's fast path admits without looking at the room per recipient:
    the bound still holds (read minus finished, at every read)."""
    finished = 0
    most = 0

    def recipients():
        nonlocal most
        for i in range(1_000):
            most = max(most, i - finished)  # admitted but not finished, before this one
            yield f"r{i}@example.test"

    def counted(result: Result) -> None:
        nonlocal finished
        finished += 1

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        summary = await send(
            "news@sender.test", MESSAGE, recipients(), on_result=counted,
            config=relay_config(sink, max_pending=64),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == sink.stats.recipients == 1_000
    assert 32 <= most <= 64


async def send_instrumented(
    recipients: Iterable[str] | AsyncIterable[str], instrument: trio.abc.Instrument,
) -> Summary:
    """Send ``recipients`` to a sink by relay, with ``instrument`` watching trio's tasks."""
    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:
            sink = await start_sink(nursery)
            summary = await send("news@sender.test", MESSAGE, recipients,
                                 config=relay_config(sink))
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    return summary


@pytest.mark.parametrize("source", ["fast", "slow", "slow async"])
async def test_intake_yields_every_checkpoint_or_sooner_for_a_slow_source(
    autojump_clock: trio.testing.MockClock, source: str,
) -> None:
    """A fast source is admitted CHECKPOINT_EVERY recipients at a time (the
    sessions then find whole windows of work); one slower than MAX_RUN per
    CLOCK_EVERY lines (stdin fed line by line) yields at each look at the
    clock, so it holds the other tasks no longer than that -- an async one
    too, though each of its recipients is a chunk of its own."""
    slow = source != "fast"
    read = 0
    starts: dict[trio.lowlevel.Task, int] = {}
    longest = 0

    class RunLength(trio.abc.Instrument):
        """Recipients read within one task step: intake's runs between yields."""

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            starts[task] = read

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal longest
            longest = max(longest, read - starts.pop(task, read))

    def recipients() -> Iterator[str]:
        nonlocal read
        for i in range(5_000):
            if slow:
                autojump_clock.jump(0.001)  # a line a millisecond, on trio's clock
            read += 1
            yield f"r{i}@example.test"

    async def without_yielding() -> AsyncIterator[str]:  # (never lets trio run others)
        for recipient in recipients():
            yield recipient

    source_of = without_yielding() if source == "slow async" else recipients()
    summary = await send_instrumented(source_of, RunLength())
    assert summary.delivered == 5_000
    if slow:
        assert longest <= intake_module.CLOCK_EVERY + 1
    else:
        assert longest >= intake_module.CHECKPOINT_EVERY


async def test_an_async_source_is_not_checkpointed_per_recipient() -> None:
    """An async iterable arrives a recipient at a time; intake still yields
    every CHECKPOINT_EVERY admissions (or MAX_RUN), not after each one."""
    feeder: trio.lowlevel.Task | None = None
    steps = 0

    class FeederSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal steps
            if task is feeder:
                steps += 1

    async def recipients():
        nonlocal feeder
        feeder = trio.lowlevel.current_task()
        for i in range(3_000):
            yield f"r{i}@example.test"

    summary = await send_instrumented(recipients(), FeederSteps())
    assert summary.delivered == 3_000
    assert steps < 100  # 377 while a chunk's unused budget stayed counted


async def test_connection_cap_per_destination_is_never_exceeded() -> None:
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    recipients = [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(400)]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.002)
        summary = await send(
            "news@sender.test", template, recipients,
            config=relay_config(sink, limits=PoolLimits(connections=3), window=4),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 400
    assert 1 <= sink.stats.max_active_sessions <= 3


async def test_messages_per_connection_then_reconnect() -> None:
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    recipients = [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(50)]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        limits = PoolLimits(connections=1, messages_per_connection=10)
        summary = await send(
            "news@sender.test", template, recipients, config=relay_config(sink, limits=limits)
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 50
    assert sink.stats.sessions == 5


async def test_relay_to_aiosmtpd_batches_too() -> None:
    with aiosmtpd_server() as (handler, port):
        summary = await send(
            "news@sender.test",
            MESSAGE,
            [f"u{i}@example.test" for i in range(120)],
            relay=Relay("127.0.0.1", port),
            secure="none",
            limits=PoolLimits(connections=2, max_rcpts=50),
        )
    assert summary.delivered == 120
    assert sorted(len(m.rcpt_tos) for m in handler.messages) == [20, 50, 50]


# -- direct (MX) mode ------------------------------------------------------------


async def start_dns(nursery: trio.Nursery) -> tuple[DNSServer, int]:
    server = DNSServer()
    port = await nursery.start(server.serve)
    return server, port


async def test_many_domains_routed_by_mx_to_several_sinks_sharing_pools() -> None:
    async with trio.open_nursery() as nursery:
        sink_a = await start_sink(nursery, host="127.0.0.1")
        sink_b = await start_sink(nursery, host="127.0.0.2", port=sink_a.port)
        dns, dns_port = await start_dns(nursery)
        dns.add("mx.provider-a.test", "A", "127.0.0.1")
        dns.add("mx.provider-b.test", "A", "127.0.0.2")
        for d in range(20):
            provider = "a" if d % 2 == 0 else "b"
            dns.add(f"domain{d}.test", "MX", f"10 mx.provider-{provider}.test.")
        config = MailerConfig(
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink_a.port),
            secure="none",
        )
        pools_seen: set[str] = set()
        async with Mailer(config) as mailer:

            def watch(result: Result) -> None:
                pools_seen.update(mailer.engine.pools)

            summary = await mailer.send(
                "news@sender.test", MESSAGE,
                [f"u{i}@domain{i % 20}.test" for i in range(400)], on_result=watch,
            )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 400
    assert sink_a.stats.recipients == 200 and sink_b.stats.recipients == 200
    # thousands of domains hosted by one provider share one pool: here 20 -> 2
    assert pools_seen == {"mx:mx.provider-a.test", "mx:mx.provider-b.test"}
    assert mailer.engine.pools == {}  # pools close when their destination has no work


async def test_equal_preference_mx_hosts_share_the_load() -> None:
    async with trio.open_nursery() as nursery:
        sink_a = await start_sink(nursery, host="127.0.0.1", latency=0.005)
        sink_b = await start_sink(nursery, host="127.0.0.2", port=sink_a.port, latency=0.005)
        dns, dns_port = await start_dns(nursery)
        dns.add("mx1.spread.test", "A", "127.0.0.1")
        dns.add("mx2.spread.test", "A", "127.0.0.2")
        dns.add("spread.test", "MX", "10 mx1.spread.test.")
        dns.add("spread.test", "MX", "10 mx2.spread.test.")
        template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
        summary = await send(
            "news@sender.test", template,
            [Recipient(f"u{i}@spread.test", {"name": str(i)}) for i in range(200)],
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink_a.port),
            secure="none", seed=7, limits=PoolLimits(connections=8, messages_per_connection=5),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 200
    assert sink_a.stats.sessions > 0 and sink_b.stats.sessions > 0
    assert sink_a.stats.messages + sink_b.stats.messages == 200


async def test_next_mx_when_first_refuses_or_greets_421() -> None:
    from .scripted import Conn, start_scripted

    async def busy(conn: Conn) -> None:
        await conn.send(b"421 4.3.2 mx1 busy, try later\r\n")

    async with trio.open_nursery() as nursery:
        _, busy_port = await start_scripted(nursery, busy)
        sink = await start_sink(nursery, host="127.0.0.3", port=busy_port)
        dns, dns_port = await start_dns(nursery)
        # 127.0.0.2 has nothing listening on that port: connection refused
        dns.add("dead.multi.test", "A", "127.0.0.2")
        dns.add("busy.multi.test", "A", "127.0.0.1")
        dns.add("good.multi.test", "A", "127.0.0.3")
        dns.add("multi.test", "MX", "5 dead.multi.test.")
        dns.add("multi.test", "MX", "10 busy.multi.test.")
        dns.add("multi.test", "MX", "20 good.multi.test.")
        summary = await send(
            "news@sender.test", MESSAGE, ["a@multi.test", "b@multi.test"],
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=busy_port),
            secure="none",
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 2
    assert sink.stats.recipients == 2


async def test_null_mx_bounces_and_a_record_fallback_delivers() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        dns, dns_port = await start_dns(nursery)
        dns.add("nomail.test", "MX", "0 .")
        dns.add("implicit.test", "A", "127.0.0.1")
        results: list[Result] = []
        summary = await send(
            "news@sender.test", MESSAGE, ["x@nomail.test", "y@implicit.test"],
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink.port),
            secure="none", on_result=results.append,
        )
        nursery.cancel_scope.cancel()
    by = {r.recipient: r for r in results}
    assert summary.delivered == 1 and summary.bounced == 1
    assert by["x@nomail.test"].status is Status.BOUNCED
    assert by["x@nomail.test"].code == 556
    assert by["y@implicit.test"].status is Status.DELIVERED
    assert sink.stats.recipients == 1


async def test_total_connection_cap_across_destinations() -> None:
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.002)
        dns, dns_port = await start_dns(nursery)
        for d in range(6):
            dns.add(f"mx{d}.cap.test", "A", "127.0.0.1")
            dns.add(f"d{d}.cap.test", "MX", f"10 mx{d}.cap.test.")
        summary = await send(
            "news@sender.test", template,
            [Recipient(f"u{i}@d{i % 6}.cap.test", {"name": str(i)}) for i in range(300)],
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink.port),
            secure="none", total_connections=4, limits=PoolLimits(connections=3),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 300
    assert sink.stats.max_active_sessions <= 4


async def test_rate_limit_holds_over_a_long_simulated_run(autojump_clock: trio.abc.Clock) -> None:
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    shaping = Shaping.from_mapping(
        {"domains": {"slow.test": {"rate": "60/min", "connections": 2}}}
    )
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        start = trio.current_time()
        summary = await send(
            "news@sender.test", template,
            [Recipient(f"u{i}@slow.test", {"name": str(i)}) for i in range(120)],
            config=relay_config(sink, shaping=shaping),
        )
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert summary.delivered == 120
    # 120 messages at 1 per second: the first goes at once, the last ~119 s later
    assert 119 <= elapsed < 125


async def test_source_addresses_are_used_round_robin() -> None:
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        limits = PoolLimits(
            connections=1, messages_per_connection=2,
            source_addresses=("127.0.0.5", "127.0.0.6"),
        )
        summary = await send(
            "news@sender.test", template,
            [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(8)],
            config=relay_config(sink, limits=limits),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 8
    assert set(sink.stats.peers) == {"127.0.0.5", "127.0.0.6"}


async def test_pool_repr_shows_its_state() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.05)
        async with Mailer(relay_config(sink, limits=PoolLimits(connections=1))) as mailer:
            reprs: list[str] = []

            async def watch() -> None:
                while not reprs:
                    for pool in mailer.engine.pools.values():
                        if pool.active_sessions:
                            reprs.append(repr(pool))
                    await trio.sleep(0.01)

            nursery.start_soon(watch)
            template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
            await mailer.send(
                "news@sender.test", template,
                [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(100)],
            )
        nursery.cancel_scope.cancel()
    assert reprs[0].startswith(f"<Pool relay:127.0.0.1:{sink.port} [1 active, 0 idle | ")
    assert reprs[0].endswith(" queued]>")


async def test_silent_first_mx_times_out_and_the_second_delivers(
    autojump_clock: trio.abc.Clock,
) -> None:
    from bulkmail.config import Timeouts

    from .scripted import Conn, start_scripted

    async def blackhole(conn: Conn) -> None:
        await trio.sleep_forever()  # accepts, never greets

    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, blackhole)
        sink = await start_sink(nursery, host="127.0.0.2", port=port)
        dns, dns_port = await start_dns(nursery)
        dns.add("hole.bh.test", "A", "127.0.0.1")
        dns.add("good.bh.test", "A", "127.0.0.2")
        dns.add("bh.test", "MX", "10 hole.bh.test.")
        dns.add("bh.test", "MX", "20 good.bh.test.")
        start = trio.current_time()
        summary = await send(
            "news@sender.test", MESSAGE, ["a@bh.test"],
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=port),
            secure="none", timeouts=Timeouts(greeting=30),
        )
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert summary.delivered == 1 and sink.stats.recipients == 1
    assert 30 <= elapsed < 31  # one greeting deadline, then the next MX at once


async def test_every_mx_dead_defers_and_never_uses_the_domains_a_record(
    autojump_clock: trio.abc.Clock,
) -> None:
    from bulkmail.results import Status

    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)  # on 127.0.0.1: the domain's own A record
        dns, dns_port = await start_dns(nursery)
        dns.add("dead.test", "MX", "10 mx1.dead.test.")
        dns.add("dead.test", "MX", "20 mx2.dead.test.")
        dns.add("mx1.dead.test", "A", "127.0.0.2")  # nothing listens there
        dns.add("mx2.dead.test", "A", "127.0.0.3")
        dns.add("dead.test", "A", "127.0.0.1")
        await send(
            "news@sender.test", MESSAGE, ["a@dead.test", "b@dead.test"],
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink.port),
            secure="none", retry_for=300.0, on_result=results.append,
        )
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert {r.code for r in results} == {451}
    assert sink.stats.sessions == 0  # the A record was never tried


async def test_stop_while_a_domain_is_resolving_ends_everyone_deferred(
    autojump_clock: trio.abc.Clock,
) -> None:
    from bulkmail.results import Status

    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        dns, dns_port = await start_dns(nursery)
        dns.add("slow.test", "MX", "10 mx.slow.test.")
        dns.blackhole("slow.test")  # the lookup hangs until its lifetime
        dns.add("fast.test", "A", "127.0.0.1")
        config = MailerConfig(
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink.port,
                          lifetime=60.0),
            secure="none",
        )
        async with Mailer(config) as mailer:

            async def stop_soon() -> None:
                await trio.sleep(5)
                mailer.stop()

            nursery.start_soon(stop_soon)
            with trio.fail_after(30):  # returns once stopped: no hang, no lost waiter
                summary = await mailer.send(
                    "news@sender.test", MESSAGE,
                    ["a@slow.test", "b@slow.test", "c@fast.test"], on_result=results.append,
                )
        nursery.cancel_scope.cancel()
    by = {r.recipient: r.status for r in results}
    assert by == {"a@slow.test": Status.DEFERRED, "b@slow.test": Status.DEFERRED,
                  "c@fast.test": Status.DELIVERED}
    assert summary.total == 3


async def test_opportunistic_tls_that_breaks_falls_back_to_plaintext() -> None:
    from .scripted import Conn, MiniSMTP, start_scripted

    class BrokenTLS(MiniSMTP):
        tls_attempts = 0

        async def __call__(self, conn: Conn) -> None:
            original = conn.readline

            async def readline() -> bytes:
                line = await original()
                if line == b"STARTTLS":
                    self.tls_attempts += 1
                    await conn.send(b"220 go ahead\r\n")
                    await trio.sleep(0.05)  # (in the same segment it would be injection)
                    await conn.send(b"this is not a TLS handshake\r\n" * 3)
                    raise EOFError  # and hang up
                return line

            conn.readline = readline  # type: ignore[method-assign]
            await super().__call__(conn)

    server = BrokenTLS(extensions=("PIPELINING", "STARTTLS"))
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        dns, dns_port = await start_dns(nursery)
        dns.add("weak-tls.test", "A", "127.0.0.1")
        with trio.fail_after(20):
            summary = await send(
                "news@sender.test", MESSAGE, ["a@weak-tls.test"],
                dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=port),
            )  # the default: opportunistic STARTTLS
        nursery.cancel_scope.cancel()
    assert server.tls_attempts == 1
    assert summary.delivered == 1 and server.delivered == ["a@weak-tls.test"]


async def test_personalised_messages_spread_over_every_session_to_the_end() -> None:
    # With a window of 32, one session taking 32 of 40 queued messages would
    # leave three sessions idle while it sends them one round trip each.
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    recipients = [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(40)]
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.005)
        config = relay_config(sink, limits=PoolLimits(connections=4))
        async with Mailer(config) as mailer:
            await mailer.send("news@sender.test", template, recipients, on_result=results.append)
        nursery.cancel_scope.cancel()
    assert len(results) == 40 and all(r.status is Status.DELIVERED for r in results)
    # the sink's "queued as <session>.<n>" says which session carried each message
    per_session = Counter(r.text.rsplit(" ", 1)[-1].split(".")[0] for r in results if r.text)
    assert len(per_session) == 4 and max(per_session.values()) <= 20, per_session


async def test_pipelined_data_keeps_one_round_trip_per_message_across_windows() -> None:
    # DATA with PIPELINING: each end of data carries the next transaction's
    # MAIL/RCPT/DATA.  When a window (here 8) runs out, the pool refills the
    # session, so no transaction pays a round trip of its own for its commands.
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    recipients = [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(40)]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, chunking=False)
        summary = await send(
            "news@sender.test", template, recipients,
            config=relay_config(sink, limits=PoolLimits(connections=1), window=8),
        )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 40 and sink.stats.sessions == 1
    # EHLO, the first MAIL/RCPT/DATA, one per message, QUIT (5 windows without refill: 47)
    assert sink.stats.reply_batches == 1 + 1 + 40 + 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_dropped_and_refused_transactions_mid_pipeline_lose_nobody(seed: int) -> None:
    # Refilled, pipelined DATA sessions die mid-stream (the sink drops 5% of
    # transactions after their end of data, without a reply) and refuse 5% of
    # recipients: everybody still gets exactly one result, and only those the
    # sink really accepted are reported delivered.
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    recipients = [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(300)]
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, chunking=False, drop_rate=0.05, reject_rate=0.05,
                                seed=seed)
        config = relay_config(sink, limits=PoolLimits(connections=3), window=8, retry_for=0.0)
        async with Mailer(config) as mailer:
            summary = await mailer.send("news@sender.test", template, recipients,
                                        on_result=results.append)
        nursery.cancel_scope.cancel()
    assert sorted(r.recipient for r in results) == sorted(r.address for r in recipients)
    by_status = Counter(r.status for r in results)
    assert by_status[Status.DELIVERED] == sink.stats.messages == summary.delivered
    assert by_status[Status.BOUNCED] == sink.stats.rejected > 0
    assert sink.stats.dropped > 0
    assert by_status[Status.DEFERRED] >= sink.stats.dropped  # in doubt, resumable
    assert all(r.possible_duplicate for r in results
               if r.status is Status.DEFERRED and r.code == 451 and "in doubt" in (r.text or ""))


async def test_on_results_hears_each_transaction_s_recipients_together() -> None:
    recipients = [f"u{i}@example.test" for i in range(50)]
    singles: list[Result] = []
    groups: list[list[Result]] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = relay_config(sink, limits=PoolLimits(connections=2, max_rcpts=10))
        async with Mailer(config) as mailer:
            await mailer.send("news@sender.test", MESSAGE, recipients,
                              on_result=singles.append,
                              on_results=lambda rs: groups.append(list(rs)))
        nursery.cancel_scope.cancel()
    assert sorted(r.recipient for g in groups for r in g) == sorted(recipients)
    assert sorted(singles) == sorted(r for g in groups for r in g)  # both hear everyone once
    assert len(groups) == sink.stats.transactions == 5  # one group per transaction
    assert all(len({r.reply for r in g}) == 1 for g in groups)


async def test_concurrent_jobs_keep_their_own_in_doubt_hook_and_presettle() -> None:
    """Per-job settings live on the job: a second job running beside the first
    gets neither its suppressions nor its in-doubt marks, and the first job
    finishing early does not switch the second one's marks off."""
    marked: dict[str, list[str]] = {"a": [], "b": []}

    def marker(name: str) -> Callable[[Sequence[str]], Awaitable[None]]:
        async def on_in_doubt(addresses: Sequence[str]) -> None:
            marked[name].extend(addresses)

        return on_in_doubt

    def suppress_first_ten(recipient: Recipient) -> tuple[Status, None, int] | None:
        number = int(recipient.address[1:].partition("@")[0])
        return (Status.SUPPRESSED, None, 0) if number < 10 else None

    template = TemplateContent("Subject: ${n}\r\n\r\nx\r\n")
    a = [Recipient(f"a{i}@example.test", {"n": str(i)}) for i in range(20)]
    b = [Recipient(f"b{i}@example.test", {"n": str(i)}) for i in range(300)]
    summaries: dict[str, Summary] = {}
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.002)
        # one connection in DATA mode: its refills take the other job's
        # transactions too, so batches mix the two jobs
        config = relay_config(sink, chunking=False, limits=PoolLimits(connections=1))
        async with Mailer(config) as mailer, trio.open_nursery() as jobs:

            async def run_b() -> None:
                summaries["b"] = await mailer.send(
                    "news@sender.test", template, b, on_in_doubt=marker("b")
                )

            async def run_a() -> None:
                summaries["a"] = await mailer.send(
                    "news@sender.test", template, a, on_in_doubt=marker("a"),
                    presettle=suppress_first_ten,
                )

            jobs.start_soon(run_b)
            jobs.start_soon(run_a)
        nursery.cancel_scope.cancel()
    assert summaries["a"].suppressed == 10 and summaries["a"].delivered == 10
    assert summaries["b"].suppressed == 0 and summaries["b"].delivered == 300
    assert sorted(marked["a"]) == sorted(r.address for r in a[10:])
    assert sorted(marked["b"]) == sorted(r.address for r in b)


async def test_two_jobs_sharing_one_content_keep_their_own_sender_and_results() -> None:
    """Two concurrent sends of the *same* content object with different senders
    never share a transaction: each recipient goes out under its own job's
    envelope sender, and each job hears only of its own recipients (a take
    used to group queued recipients by content, settling them under the
    first one's job)."""
    content = StaticContent(MESSAGE)
    a = [f"a{i}@example.test" for i in range(120)]
    b = [f"b{i}@example.test" for i in range(120)]
    heard: dict[str, list[str]] = {"a": [], "b": []}
    summaries: dict[str, Summary] = {}

    async def run(mailer: Mailer, name: str, recipients: list[str]) -> None:
        summaries[name] = await mailer.send(
            f"{name}-news@sender.test", content, recipients,
            on_result=lambda r: heard[name].append(r.recipient),
        )

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.002, record_messages=True)
        config = relay_config(sink, limits=PoolLimits(connections=1, max_rcpts=50))
        # (the old grouping mixed the jobs' results: a job never finished)
        with trio.fail_after(60):
            async with Mailer(config) as mailer, trio.open_nursery() as jobs:
                jobs.start_soon(run, mailer, "a", a)
                jobs.start_soon(run, mailer, "b", b)
        nursery.cancel_scope.cancel()
    assert sorted(heard["a"]) == sorted(a) and sorted(heard["b"]) == sorted(b)
    assert summaries["a"].delivered == summaries["b"].delivered == 120
    assert sum(len(m.rcpts) for m in sink.messages) == 240
    for message in sink.messages:  # every recipient under its own job's sender
        assert {r[0] for r in message.rcpts} == {message.mail_from[0]}
