"""The worker's in-doubt mark against real PostgreSQL and the sink: recipients
are committed as in doubt before their end of data, and a transaction holding
one that another worker took over is not sent at all."""

from __future__ import annotations

import pytest
import trio

from bulkmail import Mailer, MailerConfig, Relay
from bulkmail.message import Recipient
from bulkmail.results import Result
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
