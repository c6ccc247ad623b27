"""Reply policy end to end, over real sockets, on trio's autojump clock: every
recipient ends in exactly one final state, and what the server recorded
matches what we report (duplicates only for recipients in doubt)."""

from __future__ import annotations

from collections import Counter

import trio

from bulkmail import MailerConfig, Relay, RetryPolicy, Status, TemplateContent
from bulkmail.api import Mailer, send
from bulkmail.message import Recipient
from bulkmail.results import Result
from bulkmail.routing import DNSConfig
from bulkmail.shaping import PoolLimits
from bulkmail.sink import Sink, SinkConfig

from .dnsserver import DNSServer
from .scripted import MiniSMTP, start_scripted

MESSAGE = b"Subject: retry\r\n\r\nbody\r\n"
RETRY = RetryPolicy(first_delay=60, max_delay=600, jitter=0.1, max_attempts=6, lifetime=3600)


def config(port: int, **kwargs: object) -> MailerConfig:
    base: dict[str, object] = {"relay": Relay("127.0.0.1", port), "secure": "none", "retry": RETRY}
    base.update(kwargs)
    return MailerConfig(**base)  # type: ignore[arg-type]


def addresses(n: int, domain: str = "example.test") -> list[str]:
    return [f"user{i}@{domain}" for i in range(n)]


async def deliver_to(
    server: MiniSMTP, rcpts: list, message: object = MESSAGE, **kwargs: object
) -> list[Result]:
    """Send through a scripted server (relay mode); every result, in order."""
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        await send("a@sender.test", message, rcpts,  # type: ignore[arg-type]
                   config=config(port, **kwargs), on_result=results.append)
        nursery.cancel_scope.cancel()
    return results


def exactly_once(results: list[Result], expected: list[str]) -> dict[str, Result]:
    counts = Counter(r.recipient for r in results)
    assert sorted(counts) == sorted(expected)
    assert set(counts.values()) == {1}
    return {r.recipient: r for r in results}


async def test_greylisting_delivers_everyone_on_the_retry(autojump_clock: trio.abc.Clock) -> None:
    rcpts = addresses(30)
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(greylist=True))
        port = await nursery.start(sink.serve)
        start = trio.current_time()
        summary = await send("a@sender.test", MESSAGE, rcpts, config=config(port),
                             on_result=results.append)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    by = exactly_once(results, rcpts)
    assert summary.delivered == 30
    assert {r.attempts for r in by.values()} == {2}
    assert sink.stats.recipients == 30
    assert 54 <= elapsed <= 70  # one retry after ~60 s (10 % jitter)


async def test_452_too_many_recipients_splits_without_delay_or_attempt(
    autojump_clock: trio.abc.Clock,
) -> None:
    rcpts = addresses(95)
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(max_rcpts=10))
        port = await nursery.start(sink.serve)
        start = trio.current_time()
        await send("a@sender.test", MESSAGE, rcpts,
                   config=config(port, limits=PoolLimits(connections=1, max_rcpts=50)),
                   on_result=results.append)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    by = exactly_once(results, rcpts)
    assert {r.status for r in by.values()} == {Status.DELIVERED}
    assert {r.attempts for r in by.values()} == {1}
    assert sink.stats.messages == 10 and sink.stats.recipients == 95
    assert elapsed < 1


async def test_421_on_pipelined_rcpt_defers_then_delivers_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    state = {"first": True}

    def rcpt(address: str, n: int) -> str:
        if state["first"] and n == 3:
            state["first"] = False
            return "421 4.7.0 Try again later, closing connection.\r\n"
        return "250 2.1.5 Ok\r\n"

    server = MiniSMTP(rcpt=rcpt)
    rcpts = addresses(5)
    results = await deliver_to(server, rcpts)
    by = exactly_once(results, rcpts)
    assert {r.status for r in by.values()} == {Status.DELIVERED}
    assert {r.attempts for r in by.values()} == {2}
    assert sorted(server.delivered) == sorted(rcpts)  # no copy from the aborted transaction


async def test_mail_refusal_applies_to_every_recipient() -> None:
    server = MiniSMTP(mail=lambda s: "550 5.7.1 Sender blocked\r\n")
    rcpts = addresses(4)
    results = await deliver_to(server, rcpts)
    by = exactly_once(results, rcpts)
    assert {(r.status, r.code, r.enhanced) for r in by.values()} == {
        (Status.BOUNCED, 550, "5.7.1")
    }
    assert "Sender blocked" in (by[rcpts[0]].text or "")


async def test_end_of_data_rejection_applies_to_the_transaction(
    autojump_clock: trio.abc.Clock,
) -> None:
    calls = Counter[str]()

    def done(rcpts: list[str], content: bytes) -> str:
        calls["done"] += 1
        if calls["done"] == 1:
            return "451 4.3.0 Temporary content scanner failure\r\n"
        return "250 2.0.0 queued\r\n"

    server = MiniSMTP(data_done=done)
    rcpts = addresses(3)
    results = await deliver_to(server, rcpts)
    by = exactly_once(results, rcpts)
    assert {(r.status, r.attempts) for r in by.values()} == {(Status.DELIVERED, 2)}
    assert sorted(server.delivered) == sorted(rcpts)


async def test_drop_before_end_of_data_defers_without_doubt(
    autojump_clock: trio.abc.Clock,
) -> None:
    state = {"drop": True}

    def data_cmd(rcpts: list[str]) -> str | None:
        if state["drop"]:
            state["drop"] = False
            return None  # hang up instead of 354
        return "354 go ahead\r\n"

    server = MiniSMTP(data_cmd=data_cmd)
    rcpts = addresses(3)
    results = await deliver_to(server, rcpts)
    by = exactly_once(results, rcpts)
    assert {(r.status, r.possible_duplicate) for r in by.values()} == {(Status.DELIVERED, False)}
    assert sorted(server.delivered) == sorted(rcpts)


async def test_drop_after_end_of_data_is_in_doubt_and_resent_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    state = {"drop": True}

    def done(rcpts: list[str], content: bytes) -> str | None:
        if state["drop"]:
            state["drop"] = False
            return None  # the message was taken, the reply never leaves
        return "250 2.0.0 queued\r\n"

    server = MiniSMTP(data_done=done)
    rcpts = addresses(3)
    results = await deliver_to(server, rcpts)
    by = exactly_once(results, rcpts)
    assert {(r.status, r.possible_duplicate) for r in by.values()} == {(Status.DELIVERED, True)}
    # the server holds two copies of exactly the in-doubt recipients
    assert Counter(server.delivered) == {r: 2 for r in rcpts}


async def test_permanent_4xx_expires_into_a_bounce_with_the_last_reply(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = MiniSMTP(rcpt=lambda a, n: "450 4.2.1 Mailbox busy, slow down\r\n")
    start = trio.current_time()
    results = await deliver_to(server, ["x@example.test"])
    elapsed = trio.current_time() - start
    (result,) = results
    assert result.status is Status.BOUNCED
    assert result.attempts == RETRY.max_attempts
    assert result.enhanced == "5.4.7"
    assert "Mailbox busy" in (result.text or "")
    assert elapsed > 60 + 120 + 240  # hours of schedule, milliseconds of test


async def test_retry_window_ends_with_resumable_deferrals(autojump_clock: trio.abc.Clock) -> None:
    server = MiniSMTP(rcpt=lambda a, n: "451 4.7.1 Greylisted, come back later\r\n")
    results = await deliver_to(server, addresses(2), retry_for=100.0)
    assert {(r.status, r.code) for r in results} == {(Status.DEFERRED, 451)}
    assert {r.attempts for r in results} == {2}  # t=0 and t≈60; the next would pass 100 s


async def test_one_destination_backing_off_does_not_slow_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    down = MiniSMTP(greeting="421 4.3.2 Service not available, closing\r\n")
    results: list[tuple[float, Result]] = []
    async with trio.open_nursery() as nursery:
        _, down_port = await start_scripted(nursery, down)
        sink = Sink(SinkConfig(host="127.0.0.2", port=down_port))
        await nursery.start(sink.serve)
        dns = DNSServer()
        dns_port = await nursery.start(dns.serve)
        dns.add("mx.down.test", "A", "127.0.0.1")
        dns.add("mx.up.test", "A", "127.0.0.2")
        dns.add("down.test", "MX", "10 mx.down.test.")
        dns.add("up.test", "MX", "10 mx.up.test.")
        template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
        rcpts = [Recipient(f"u{i}@down.test", {"name": str(i)}) for i in range(50)]
        rcpts += [Recipient(f"u{i}@up.test", {"name": str(i)}) for i in range(200)]
        start = trio.current_time()
        async with Mailer(
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=down_port),
            secure="none", retry=RETRY, retry_for=600.0,
            limits=PoolLimits(connections=4),
        ) as mailer:
            await mailer.send(
                "a@sender.test", template, rcpts,
                on_result=lambda r: results.append((trio.current_time() - start, r)),
            )
        nursery.cancel_scope.cancel()
    up = [(t, r) for t, r in results if r.recipient.endswith("@up.test")]
    down_results = [r for t, r in results if r.recipient.endswith("@down.test")]
    assert len(up) == 200 and {r.status for _, r in up} == {Status.DELIVERED}
    assert max(t for t, _ in up) < 1.0  # full speed while down.test backs off
    assert len(down_results) == 50
    assert {r.status for r in down_results} == {Status.DEFERRED}
    assert {r.code for r in down_results} == {421}
    # backoff: the down destination saw few connection attempts, not one per recipient
    assert down.sessions < 50


async def test_broken_pipelining_is_transient_and_retried_without_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = MiniSMTP(forget_pipelined_mail=True)  # advertises PIPELINING, can't do it
    rcpts = addresses(3)
    start = trio.current_time()
    results = await deliver_to(server, rcpts)
    elapsed = trio.current_time() - start
    by = exactly_once(results, rcpts)
    assert {r.status for r in by.values()} == {Status.DELIVERED}  # not bounced by the 503s
    assert sorted(server.delivered) == sorted(rcpts)
    assert elapsed > 50  # deferred once, then a retry without pipelining


async def test_stale_421_on_a_pooled_session_costs_no_attempt() -> None:
    def mail(line: str) -> str:
        # the server gives up on the session between transactions
        return "421 4.4.2 idle too long, closing\r\n" if server.mail_count == 2 else (
            "250 2.1.0 Ok\r\n"
        )

    server = MiniSMTP(mail=mail)
    template = TemplateContent("Subject: ${name}\r\n\r\nx\r\n")
    results = await deliver_to(
        server, [Recipient(f"u{i}@example.test", {"name": str(i)}) for i in range(3)],
        template, limits=PoolLimits(connections=1),
    )
    assert {(r.status, r.attempts) for r in results} == {(Status.DELIVERED, 1)}
    assert server.sessions == 2


async def test_452_on_rcpt_beside_a_4xx_at_end_of_data_spends_no_attempt(
    autojump_clock: trio.abc.Clock,
) -> None:
    """RFC 5321 §4.5.3.1.10: recipients refused "too many" on RCPT go into the
    next transaction at once, whatever the end of data then said to the others
    (here a 451 the first time): only those others spend an attempt."""
    done_calls = Counter[str]()

    def rcpt(address: str, n: int) -> str:
        return "452 4.5.3 Too many recipients\r\n" if n > 2 else "250 2.1.5 Ok\r\n"

    def done(rcpts: list[str], content: bytes) -> str:
        done_calls["done"] += 1
        if done_calls["done"] == 1:
            return "451 4.3.0 Temporary content scanner failure\r\n"
        return "250 2.0.0 queued\r\n"

    server = MiniSMTP(rcpt=rcpt, data_done=done)
    rcpts = addresses(4)
    start = trio.current_time()
    results = await deliver_to(server, rcpts, limits=PoolLimits(connections=1, max_rcpts=4))
    elapsed = trio.current_time() - start
    by = exactly_once(results, rcpts)
    assert {r.status for r in by.values()} == {Status.DELIVERED}
    # the first two: 451 at end of data, then the retry; the last two: straight
    # into the next transaction, delivered on their first attempt
    assert [by[r].attempts for r in rcpts] == [2, 2, 1, 1]
    assert elapsed > 50  # the first two waited for their retry
