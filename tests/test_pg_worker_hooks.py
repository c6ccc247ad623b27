"""The worker's in-doubt mark against real PostgreSQL and the sink: recipients
are committed as in doubt before their end of data, and a transaction holding
one that another worker took over is not sent at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from bulkmail import Mailer, MailerConfig, Relay
from bulkmail.message import Recipient
from bulkmail.results import Result, Status
from bulkmail.shaping import PoolLimits
from bulkmail.store import PgStore
from bulkmail.store.aio import AsyncStore
from bulkmail.store.worker_hooks import (
    InFlight,
    LeaseLost,
    install_store_hooks,
    mark_or_refuse,
    send_claimed,
)
from bulkmail.store.writer import StoreWriter
from tests.pgutil import column, pg_url, store_url, travel
from tests.sinkutil import start_sink

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

EVERYONE = ["a@x.test", "b@x.test", "c@x.test"]
MESSAGE = b"From: news@sender.test\r\nSubject: hi\r\n\r\nHi\r\n"


def states(store_url: str) -> dict[str, str]:
    return dict(zip(column(store_url, "SELECT address FROM recipients ORDER BY address"),
                    column(store_url, "SELECT state FROM recipients ORDER BY address"),
                    strict=True))


def claimed_job(store_url: str) -> int:
    with PgStore(store_url) as store:
        job = store.create_job()
        store.load_recipients(job, EVERYONE)
        assert store.claim("me", 10, 30, job=job) is not None
    return job


async def test_mark_commits_in_doubt_or_refuses_what_is_no_longer_ours(store_url: str) -> None:
    job = claimed_job(store_url)
    astore = await AsyncStore.open(store_url, connections=2)
    writer = StoreWriter(astore, "me")
    await mark_or_refuse(writer, job, ["a@x.test"])  # committed before it returns
    assert states(store_url)["a@x.test"] == "in_doubt"
    travel(store_url, "UPDATE recipients SET lease_owner = 'other' WHERE address = 'b@x.test'")
    with pytest.raises(LeaseLost) as lost:
        await mark_or_refuse(writer, job, ["b@x.test", "c@x.test"])
    assert lost.value.job == job and lost.value.addresses == ["b@x.test"]
    await astore.aclose()
    assert states(store_url)["b@x.test"] == "pending"  # the new owner's: untouched
    # c, ours, was marked with it: unsent now, it is resent once, flagged --
    # a needless flag, never a lost recipient or an unflagged second copy
    assert states(store_url)["c@x.test"] == "in_doubt"


async def test_a_transaction_with_a_taken_over_recipient_is_not_sent(store_url: str) -> None:
    job = claimed_job(store_url)
    travel(store_url, "UPDATE recipients SET lease_owner = 'other' WHERE address = 'b@x.test'")
    astore = await AsyncStore.open(store_url, connections=2)
    writer = StoreWriter(astore, "me")
    in_flight = InFlight()
    results: list[Result] = []
    caught: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        await nursery.start(writer.run)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none")
        try:
            async with Mailer(config) as mailer:
                install_store_hooks(mailer, writer, in_flight)
                await send_claimed(mailer, writer, in_flight, job, "news@sender.test",
                                   MESSAGE, [Recipient(a) for a in EVERYONE],
                                   on_results=results.extend, verp=False)
        except* LeaseLost as group:
            caught.extend(group.exceptions)
        nursery.cancel_scope.cancel()
    await astore.aclose()
    assert [type(e) for e in caught] == [LeaseLost]
    assert not sink.messages  # one transaction for a, b and c: none of it was sent
    assert sink.stats.recipients == 0
    assert states(store_url)["b@x.test"] == "pending"


async def forward_checking_ends_of_data(
    sink_port: int, check: Callable[[list[str]], Awaitable[None]],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TCP proxy to the sink that holds each end of data (the "." line of
    DATA) until ``check(that transaction's recipients)`` has returned."""

    async def handle(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", sink_port) as server:

            async def down() -> None:
                async for chunk in server:
                    await client.send_all(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(down)
                buffered, rcpts, in_data = b"", [], False
                async for chunk in client:
                    buffered += chunk
                    *lines, buffered = buffered.split(b"\r\n")
                    out = b""
                    for line in lines:
                        if in_data and line == b".":
                            await server.send_all(out)
                            out = b""
                            await check(rcpts)  # before the end of data leaves
                            in_data, rcpts = False, []
                        elif not in_data and line.upper().startswith(b"RCPT TO:"):
                            rcpts.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
                        elif not in_data and line.upper() == b"DATA":
                            in_data = True
                        out += line + b"\r\n"
                    await server.send_all(out)
                nursery.cancel_scope.cancel()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_every_end_of_data_finds_its_recipients_committed_in_doubt(
    store_url: str,
) -> None:
    # many transactions at once on several connections: their marks share
    # group commits, and still each end of data leaves only once its own
    # recipients are committed in doubt (what another connection reads)
    everyone = [f"u{i}@x.test" for i in range(60)]
    with PgStore(store_url) as store:
        job = store.create_job()
        store.load_recipients(job, everyone)
        assert store.claim("me", 100, 30, job=job) is not None
    seen: list[list[str]] = []
    not_marked: list[str] = []

    reader = PgStore(store_url).journal(job)  # another connection: sees commits only

    async def check(rcpts: list[str]) -> None:
        found = await trio.to_thread.run_sync(reader.lookup, rcpts)
        seen.append(rcpts)
        not_marked.extend(a for a in rcpts if a not in found
                          or found[a].status is not Status.IN_DOUBT)

    astore = await AsyncStore.open(store_url, connections=4)
    writer = StoreWriter(astore, "me")
    in_flight = InFlight()
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, chunking=False, latency=0.01)
        port = await nursery.start(forward_checking_ends_of_data, sink.port, check)
        await nursery.start(writer.run)
        config = MailerConfig(relay=Relay("127.0.0.1", port), secure="none", chunking=False,
                              limits=PoolLimits(connections=4, max_rcpts=2))
        async with Mailer(config) as mailer:
            install_store_hooks(mailer, writer, in_flight)
            await send_claimed(mailer, writer, in_flight, job, "news@sender.test",
                               MESSAGE, [Recipient(a) for a in everyone],
                               on_results=results.extend, verp=False)
        await writer.aclose()
        nursery.cancel_scope.cancel()
    await astore.aclose()
    reader.db.close()
    assert sorted(a for rcpts in seen for a in rcpts) == sorted(everyone)
    assert len(seen) == 30  # two per transaction, on several connections
    assert not_marked == []
    assert writer.commits < 30 + 60  # marks shared commits
    assert sorted(r.recipient for r in results if r.status is Status.DELIVERED) == sorted(
        everyone)
