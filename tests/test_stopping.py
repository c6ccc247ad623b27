"""Runs that end early -- cancelled, stopped, aborted, or failed by an
authentication error or a callback -- still give every recipient exactly one
result, never bounce anyone for a configuration mistake, and never leave an
accepted message unreported or unflagged.  Real servers on loopback."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

import pytest
import trio

from bulkmail import Credentials, Mailer, MailerConfig, Recipient, Relay, Status, TemplateContent
from bulkmail.api import send
from bulkmail.errors import synthetic_reply
from bulkmail.results import Result
from bulkmail.shaping import PoolLimits
from bulkmail.sink import Sink

from .scripted import MiniSMTP, start_scripted
from .sinkutil import start_sink

MESSAGE = b"Subject: news\r\n\r\nHello.\r\n"
TEMPLATE = TemplateContent("Subject: hi ${n}\r\n\r\nDear ${n}.\r\n")


def relay(port: int, **kwargs: object) -> MailerConfig:
    return MailerConfig(relay=Relay("127.0.0.1", port), secure="none", **kwargs)  # type: ignore[arg-type]


def readers(n: int) -> list[Recipient]:
    return [Recipient(f"u{i}@example.test", {"n": str(i)}) for i in range(n)]


def one_each(results: Sequence[Result], expected: Sequence[str]) -> dict[str, Result]:
    """Every expected recipient has exactly one result (and nobody else has one)."""
    counts = Counter(r.recipient for r in results)
    assert sorted(counts) == sorted(expected)
    assert set(counts.values()) == {1}
    return {r.recipient: r for r in results}


def accepted_by(sink: Sink) -> set[str]:
    return {rcpt for message in sink.messages for rcpt in message.rcpts}


def assert_nothing_accepted_unreported(sink: Sink, by: dict[str, Result]) -> None:
    """What the server accepted of these recipients was reported delivered, or
    flagged as a possible duplicate."""
    covered = {a for a, r in by.items() if r.status is Status.DELIVERED or r.possible_duplicate}
    assert accepted_by(sink) & set(by) <= covered


# -- authentication failures ----------------------------------------------------------------


async def test_wrong_password_defers_everyone_and_stops_the_run() -> None:
    rcpts = [f"u{i}@example.test" for i in range(300)]
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, auth=("news", "right"))
        summary = await send(
            "news@sender.test", MESSAGE, rcpts, on_result=results.append,
            config=relay(
                sink.port, credentials=Credentials("news", "wrong"), allow_plaintext_auth=True,
                limits=PoolLimits(connections=4, max_rcpts=10),
            ),
        )
        nursery.cancel_scope.cancel()
    by = one_each(results, rcpts)
    assert {r.status for r in by.values()} == {Status.DEFERRED}  # nobody bounced
    assert summary.bounced == 0 and summary.deferred == 300
    assert summary.aborted is not None and summary.aborted.code == 535
    assert {r.code for r in by.values()} == {535}  # the server's own reply
    # stopped at once: the sessions already connecting, not one per 10 recipients
    assert sink.stats.sessions <= 4 and sink.stats.transactions == 0


async def test_refusing_credentials_without_tls_aborts_too() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, auth=("news", "right"))
        results: list[Result] = []
        summary = await send(
            "news@sender.test", MESSAGE, ["a@example.test", "b@example.test"],
            on_result=results.append,
            config=relay(sink.port, credentials=Credentials("news", "right")),
        )
        nursery.cancel_scope.cancel()
    assert summary.aborted is not None and summary.aborted.code == 530
    assert {(r.status, r.code) for r in results} == {(Status.DEFERRED, 530)}


async def test_abort_with_a_reason_ends_everyone_not_final_deferred() -> None:
    rcpts = readers(400)
    reason = synthetic_reply(451, "4.3.0", "journal full")
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        async with Mailer(relay(sink.port, window=1, limits=PoolLimits(connections=2))) as mailer:

            def on_result(result: Result) -> None:
                results.append(result)
                if len(results) == 50:
                    mailer.abort(reason)

            summary = await mailer.send("news@sender.test", TEMPLATE, rcpts, on_result=on_result)
        nursery.cancel_scope.cancel()
    by = one_each(results, [r.address for r in rcpts])
    assert summary.aborted is reason
    assert 50 <= summary.delivered <= 52  # what was in flight on the two connections finished
    assert summary.deferred == 400 - summary.delivered
    assert {r.reply for r in by.values() if r.status is Status.DEFERRED} == {reason}
    assert accepted_by(sink) == {a for a, r in by.items() if r.status is Status.DELIVERED}


# -- stop ------------------------------------------------------------------------------------


async def test_stop_starts_no_new_transaction_and_defers_the_rest() -> None:
    rcpts = readers(300)
    results: list[Result] = []
    at_stop: list[int] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.002)
        # DATA mode: the old session wrote a whole window of MAILs after a stop
        config = relay(sink.port, chunking=False, limits=PoolLimits(connections=3))
        async with Mailer(config) as mailer:

            def on_result(result: Result) -> None:
                results.append(result)
                if len(results) == 30:
                    at_stop.append(sink.stats.transactions)
                    mailer.stop()

            summary = await mailer.send("news@sender.test", TEMPLATE, rcpts, on_result=on_result)
        nursery.cancel_scope.cancel()
    by = one_each(results, [r.address for r in rcpts])
    # in-flight transactions finished (at most one per connection), nothing new started
    assert sink.stats.transactions <= at_stop[0] + 3
    assert summary.delivered == sink.stats.messages
    assert summary.deferred == 300 - summary.delivered and summary.aborted is None
    assert {r.text for r in by.values() if r.status is Status.DEFERRED} == {
        "run stopped before this recipient was attempted"
    }


# -- cancellation ----------------------------------------------------------------------------


async def test_cancel_scope_around_the_mailer_gives_everyone_one_result() -> None:
    rcpts = readers(600)
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.005)
        with trio.CancelScope() as scope:
            async with Mailer(relay(sink.port, limits=PoolLimits(connections=4))) as mailer:

                def on_result(result: Result) -> None:
                    results.append(result)
                    if len(results) == 150:
                        scope.cancel()

                await mailer.send("news@sender.test", TEMPLATE, rcpts, on_result=on_result)
        after_exit = sink.stats.transactions
        await trio.sleep(0.05)  # anything still arriving at the server shows now
        nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    by = one_each(results, [r.address for r in rcpts])
    assert_nothing_accepted_unreported(sink, by)
    assert {r.status for r in by.values()} == {Status.DELIVERED, Status.DEFERRED}
    assert sink.stats.transactions == after_exit  # nothing was sent after the block was left
    flagged = [r for r in by.values() if r.possible_duplicate]
    assert flagged and {r.status for r in flagged} == {Status.DEFERRED}
    assert {r.enhanced for r in flagged} == {"4.4.2"}


async def test_cancelling_send_inside_a_mailer_stops_that_job_only() -> None:
    first, second = readers(600), [Recipient(f"v{i}@example.test", {"n": "x"}) for i in range(50)]
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.005)
        async with Mailer(relay(sink.port, limits=PoolLimits(connections=4))) as mailer:
            with trio.CancelScope() as scope:

                def on_result(result: Result) -> None:
                    results.append(result)
                    if len(results) == 100:
                        scope.cancel()

                await mailer.send("news@sender.test", TEMPLATE, first, on_result=on_result)
            assert scope.cancelled_caught
            # every recipient of the cancelled job had its result before send() returned
            by = one_each(results, [r.address for r in first])
            sent_by_then = sink.stats.transactions
            later: list[Result] = []
            summary = await mailer.send(
                "news@sender.test", TEMPLATE, second, on_result=later.append
            )
        nursery.cancel_scope.cancel()
    assert_nothing_accepted_unreported(sink, by)
    assert summary.delivered == 50 and len(later) == 50
    # the cancelled job sent nothing more: the sink saw only the second job since
    assert sink.stats.transactions == sent_by_then + 50


# -- in doubt twice --------------------------------------------------------------------------


async def test_in_doubt_twice_ends_in_doubt_instead_of_a_third_copy(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = MiniSMTP(data_done=lambda rcpts, content: None)  # drops after every end of data
    rcpts = [f"u{i}@example.test" for i in range(3)]
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        summary = await send("a@sender.test", MESSAGE, rcpts, config=relay(port),
                             on_result=results.append)
        nursery.cancel_scope.cancel()
    by = one_each(results, rcpts)
    assert {(r.status, r.possible_duplicate, r.attempts) for r in by.values()} == {
        (Status.IN_DOUBT, True, 2)
    }
    assert {r.enhanced for r in by.values()} == {"4.4.2"}
    assert Counter(server.delivered) == {r: 2 for r in rcpts}  # sent, resent once, no more
    assert summary.in_doubt == 3 and summary.possible_duplicates == 3


async def test_a_resumed_in_doubt_recipient_in_doubt_again_is_not_sent_a_third_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = MiniSMTP(data_done=lambda rcpts, content: None)
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        results: list[Result] = []
        await send("a@sender.test", MESSAGE, [Recipient("u@example.test", None, True)],
                   config=relay(port), on_result=results.append)
        nursery.cancel_scope.cancel()
    assert [(r.status, r.attempts) for r in results] == [(Status.IN_DOUBT, 1)]
    assert server.delivered == ["u@example.test"]


# -- failing callbacks and hooks -------------------------------------------------------------


class CallbackBroke(Exception):
    pass


async def test_a_failing_results_callback_stops_the_job_and_is_raised_as_itself() -> None:
    calls = 0

    def on_results(results: Sequence[Result]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise CallbackBroke("disk full")

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.002)
        with pytest.raises(CallbackBroke, match="disk full"):
            async with Mailer(relay(sink.port, limits=PoolLimits(connections=2))) as mailer:
                await mailer.send("news@sender.test", TEMPLATE, readers(500),
                                  on_results=on_results)
        at_exit = sink.stats.transactions
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert calls == 3  # never called again after it raised
    assert at_exit < 500 and sink.stats.transactions == at_exit


async def test_a_failing_in_doubt_hook_keeps_the_end_of_data_from_leaving() -> None:
    async def on_in_doubt(addresses: Sequence[str]) -> None:
        raise CallbackBroke("journal not writable")

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        async with Mailer(relay(sink.port)) as mailer:
            with pytest.raises(CallbackBroke):
                await mailer.send("news@sender.test", MESSAGE, ["a@example.test"],
                                  on_in_doubt=on_in_doubt)
            # the mailer is still usable for a job without the failing hook
            summary = await mailer.send("news@sender.test", MESSAGE, ["b@example.test"])
        nursery.cancel_scope.cancel()
    assert summary.delivered == 1
    assert sink.stats.messages == 1  # only b: a's end of data never left


async def test_cancelled_while_the_in_doubt_mark_is_written_flags_nobody() -> None:
    """The end of data waits for its in-doubt mark: cancelled during the mark,
    nothing left the process, so the recipients end deferred and unflagged."""

    async def slow_mark(addresses: Sequence[str]) -> None:
        await trio.sleep_forever()

    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        async with Mailer(relay(sink.port)) as mailer:
            with trio.move_on_after(0.2) as scope:
                await mailer.send("news@sender.test", MESSAGE, ["a@example.test", "b@example.test"],
                                  on_result=results.append, on_in_doubt=slow_mark)
        nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert sorted((r.recipient, r.status, r.possible_duplicate) for r in results) == [
        ("a@example.test", Status.DEFERRED, False), ("b@example.test", Status.DEFERRED, False)
    ]
    assert sink.stats.messages == 0


async def test_abort_names_an_exception_or_takes_an_smtp_error_s_reply() -> None:
    from bulkmail.errors import SMTPAuthError

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        async with Mailer(relay(sink.port)) as mailer:
            mailer.abort(OSError(28, "No space left on device"))
            mailer.abort(SMTPAuthError(synthetic_reply(535, "5.7.8", "bad credentials")))
            results: list[Result] = []
            summary = await mailer.send("news@sender.test", MESSAGE, ["a@example.test"],
                                        on_result=results.append)
        nursery.cancel_scope.cancel()
    assert summary.aborted is not None  # the first reason wins
    assert (summary.aborted.code, summary.aborted.enhanced) == (451, "4.3.0")
    assert "No space left on device" in summary.aborted.text
    assert results == [] and summary.total == 0  # an aborted mailer takes nothing new
    assert sink.stats.sessions == 0


async def test_a_callback_failing_while_the_mailer_unwinds_is_no_nursery_error() -> None:
    """The block fails with work queued; the results that unwinding produces
    go to a callback that raises (a journal that cannot be written): the
    caller gets its own error back, never a corrupted nursery."""

    def record(results: Sequence[Result]) -> None:
        if any(r.status is Status.DEFERRED for r in results):
            raise CallbackBroke("journal not writable")

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.002)
        with pytest.raises(ExceptionGroup) as caught:
            async with Mailer(relay(sink.port, limits=PoolLimits(connections=2))) as mailer, (
                trio.open_nursery()
            ) as jobs:
                jobs.start_soon(functools.partial(
                    mailer.send, "news@sender.test", TEMPLATE, readers(500), on_results=record
                ))
                while sink.stats.messages < 20:
                    await trio.sleep(0.001)
                raise RuntimeError("the caller's own bug")
        nursery.cancel_scope.cancel()
    matched, rest = caught.value.split(RuntimeError)
    assert matched is not None and rest is None
    assert str(matched.exceptions[0]) == "the caller's own bug"


async def test_an_in_doubt_hook_refusing_with_a_reply_sends_nothing_and_defers() -> None:
    """A hook that refuses with an SMTP error (a journal that cannot be
    written) is not a bug: the session ends as if the connection were lost,
    no end of data leaves, and the recipients end deferred with its reply."""
    from bulkmail.errors import SMTPError

    refusal = synthetic_reply(451, "4.3.0", "not sent: the journal cannot be written")

    async def on_in_doubt(addresses: Sequence[str]) -> None:
        raise SMTPError(refusal)

    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        async with Mailer(relay(sink.port, retry_for=0.0)) as mailer:
            summary = await mailer.send("news@sender.test", MESSAGE, ["a@example.test"],
                                        on_result=results.append, on_in_doubt=on_in_doubt)
        nursery.cancel_scope.cancel()
    assert [(r.status, r.reply, r.possible_duplicate) for r in results] == [
        (Status.DEFERRED, refusal, False)
    ]
    assert summary.deferred == 1 and sink.stats.messages == 0
