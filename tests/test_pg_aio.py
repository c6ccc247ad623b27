"""The store from trio: calls in threads (the event loop runs on while the
database is slow), group commits, fenced in-doubt marks, failures."""

from __future__ import annotations

import psycopg
import pytest
import trio

from bulkmail.journal import Outcome, Status
from bulkmail.store import PgStore, StoreError
from bulkmail.store.aio import AsyncStore, keep_leases
from bulkmail.store.writer import RIDE_ALONG, StoreWriter
from tests.pgutil import pg_url, store_url, travel

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

DELIVERED = Outcome(Status.DELIVERED, 250, "2.0.0", "queued", 1, "mx.example")


def make_job(store_url: str, n: int, domains: int = 4) -> int:
    with PgStore(store_url) as s:
        job = s.create_job()
        s.load_recipients(job, [f"u{i}@d{i % domains}.example" for i in range(n)])
    return job


async def test_a_slow_database_does_not_stall_the_event_loop(store_url: str) -> None:
    store = await AsyncStore.open(store_url, connections=2)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    def slow(s: PgStore) -> None:
        with s.db.using() as conn:
            conn.execute("SELECT pg_sleep(0.5)")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(0)
        before = ticks
        await store.call(slow)
        assert ticks > before + 1  # the loop went on during the query
        assert await store.heartbeat("w", 30) == 0  # another connection meanwhile
        nursery.cancel_scope.cancel()
    await store.aclose()


async def test_results_and_in_doubt_marks_go_in_group_commits(store_url: str) -> None:
    job = make_job(store_url, 400)
    store = await AsyncStore.open(store_url, connections=2)
    writer = StoreWriter(store, "w1", max_delay=0.02)
    claims = []
    while (claim := await store.claim("w1", 25, 30, job=job)) is not None:
        claims.append(claim)
    marked: list[set[str]] = []

    async def transaction(addresses: list[str]) -> None:
        marked.append(await writer.mark_in_doubt(job, addresses))
        writer.submit_outcomes(job, addresses, DELIVERED)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as senders:
            for claim in claims:
                senders.start_soon(transaction, [r.address for r in claim.recipients])
        await writer.aclose()
    assert len(claims) == 16
    assert sorted(len(m) for m in marked) == [25] * 16
    assert writer.commits < 16 * 2  # grouped, not one per write
    assert writer.lost == 0
    with PgStore(store_url) as s:
        assert s.counts(job) == {Status.DELIVERED: 400}
        assert s.claim("w2", 10, 30, job=job) is None  # results released the leases


async def test_the_writer_reports_recipients_taken_over(store_url: str) -> None:
    job = make_job(store_url, 3, domains=1)
    store = await AsyncStore.open(store_url, connections=1)
    lost: list[tuple[int, list[str]]] = []
    writer = StoreWriter(store, "slow", on_lost=lambda j, a: lost.append((j, a)))
    claim = await store.claim("slow", 10, 30, job=job)
    assert claim is not None
    mine = [r.address for r in claim.recipients]
    travel(store_url, "UPDATE recipients SET lease_expires = now() - interval '1 second'")
    taken = await store.claim("fast", 1, 30, job=job)
    assert taken is not None
    theirs = taken.recipients[0].address
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        # in doubt only where it still leases: the end of data must not go to the others
        assert await writer.mark_in_doubt(job, mine) == set(mine) - {theirs}
        writer.submit_outcomes(job, mine, DELIVERED)
        await writer.aclose()
    assert lost == [(job, [theirs])] and writer.lost == 1
    await store.aclose()


async def test_a_flush_without_run_commits_in_the_caller(store_url: str) -> None:
    job = make_job(store_url, 2, domains=1)
    store = await AsyncStore.open(store_url, connections=1)
    writer = StoreWriter(store, "w")
    claim = await store.claim("w", 10, 30, job=job)
    assert claim is not None
    addresses = [r.address for r in claim.recipients]
    assert await writer.mark_in_doubt(job, addresses) == set(addresses)
    writer.submit_outcomes(job, addresses, DELIVERED)
    await writer.flush()
    with PgStore(store_url) as s:
        assert s.counts(job) == {Status.DELIVERED: 2}
    await store.aclose()


async def test_a_lost_connection_fails_the_writer_loudly(pg_url: str, store_url: str) -> None:
    job = make_job(store_url, 5, domains=1)
    store = await AsyncStore.open(store_url, connections=1)
    writer = StoreWriter(store, "w", max_delay=0.5)
    claim = await store.claim("w", 10, 30, job=job)
    assert claim is not None
    pid = await store.call(lambda s: s.db.backend_pid)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(ExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit_outcomes(job, [r.address for r in claim.recipients], DELIVERED)
            await writer.mark_in_doubt(job, ["u0@d0.example"])
    # run() fails with the cause, the waiting mark with the writer's failure
    errors = failed.value.exceptions
    assert all(isinstance(e, StoreError) for e in errors)
    assert all("lost the database connection to postgresql://" in str(e) for e in errors)
    with pytest.raises(StoreError, match="job store writer failed"):
        writer.submit_outcomes(job, ["u0@d0.example"], DELIVERED)
    with PgStore(store_url) as s:  # nothing was recorded as done: the leases will expire
        assert s.counts(job) == {Status.PENDING: 5}


async def test_keep_leases_heartbeats_before_it_starts(store_url: str) -> None:
    job = make_job(store_url, 3, domains=1)
    store = await AsyncStore.open(store_url, connections=1)
    assert await store.claim("w1", 10, 30, job=job) is not None
    travel(store_url, "UPDATE recipients SET lease_expires = now() - interval '1 second'")
    async with trio.open_nursery() as nursery:
        await nursery.start(keep_leases, store, "w1", 30)
        assert await store.claim("w2", 10, 30, job=job) is None  # w1's again
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="shorter than the lease"):
        await keep_leases(store, "w1", 30, interval=30)
    await store.aclose()


async def test_a_flush_after_cancellation_still_saves(store_url: str) -> None:
    job = make_job(store_url, 4, domains=1)
    store = await AsyncStore.open(store_url, connections=1)
    writer = StoreWriter(store, "w", max_delay=10)
    claim = await store.claim("w", 10, 30, job=job)
    assert claim is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_outcomes(job, [r.address for r in claim.recipients], DELIVERED)
        nursery.cancel_scope.cancel()  # run() stops while the group is gathering
    assert writer.pending == 4
    with trio.CancelScope(shield=True):
        await writer.flush()
    assert writer.pending == 0
    with PgStore(store_url) as s:
        assert s.counts(job) == {Status.DELIVERED: 4}
    await store.aclose()


async def test_an_in_doubt_mark_never_waits_for_results(store_url: str) -> None:
    # results linger (here: until a flush) to fill big commits; a mark is on a
    # transaction's critical path and commits at once, on a lane of its own,
    # taking along at most RIDE_ALONG of the results queued meanwhile
    job = make_job(store_url, RIDE_ALONG + 40, domains=1)
    store = await AsyncStore.open(store_url, connections=3)
    writer = StoreWriter(store, "w", max_delay=3600)
    claim = await store.claim("w", RIDE_ALONG + 40, 30, job=job)
    assert claim is not None
    addresses = [r.address for r in claim.recipients]
    results, marks = addresses[:RIDE_ALONG + 20], addresses[RIDE_ALONG + 20:]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_outcomes(job, results[:RIDE_ALONG], DELIVERED)
        writer.submit_outcomes(job, results[RIDE_ALONG:], DELIVERED)
        marked = await writer.mark_in_doubt(job, marks)
        assert marked == set(marks)
        assert writer.pending == 20  # the results beyond RIDE_ALONG still wait
        with PgStore(store_url) as s:
            assert s.counts(job) == {Status.DELIVERED: RIDE_ALONG, Status.PENDING: 20,
                                     Status.IN_DOUBT: 20}
        await writer.flush()  # a flush does not wait out the lingering
        assert writer.pending == 0
        with PgStore(store_url) as s:
            assert s.counts(job) == {Status.DELIVERED: RIDE_ALONG + 20, Status.IN_DOUBT: 20}
        await writer.aclose()
    await store.aclose()


async def test_marks_from_many_transactions_share_commits(store_url: str) -> None:
    job = make_job(store_url, 200, domains=1)
    store = await AsyncStore.open(store_url, connections=3)
    writer = StoreWriter(store, "w")
    claim = await store.claim("w", 200, 30, job=job)
    assert claim is not None
    addresses = [r.address for r in claim.recipients]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as transactions:
            for address in addresses:
                transactions.start_soon(writer.mark_in_doubt, job, [address])
        await writer.aclose()
    # two commits at once at most, the rest queued meanwhile: a handful, not 200
    assert writer.commits < 50
    with PgStore(store_url) as s:
        assert s.counts(job) == {Status.IN_DOUBT: 200}
    await store.aclose()
