"""``bulkmail worker`` processes sharing one job through PostgreSQL and sending
to the sink: every recipient exactly once; with one worker SIGKILLed mid-run,
the others take its recipients over once its leases expire, nobody is lost,
and the only second copies are of its in-doubt recipients, all flagged."""

from __future__ import annotations

import os
import random
import signal

import pytest
import trio

from bulkmail.journal import Status
from bulkmail.store import PgStore
from bulkmail.store.worker import STORE_CONNECTIONS
from tests.pg_workers import (
    addresses,
    create_loading_job,
    finish,
    finish_loading,
    received,
    senders_by_source,
    start_worker,
)
from tests.pgutil import column, pg_url, store_url, travel
from tests.sinkutil import start_sink

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest


@pytest.mark.parametrize("workers", [2, 3])
async def test_workers_deliver_every_recipient_exactly_once(
    store_url: str, workers: int,
) -> None:
    everyone = addresses(900, 6)
    job = create_loading_job(store_url, max_rcpts=5)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.02)
        sources = [f"127.0.0.{i + 2}" for i in range(workers)]
        processes = [
            await start_worker(store_url, job, sink, source, "--connections", "2",
                               "--claim-size", "10", "--max-leased", "80")
            for source in sources
        ]
        await trio.sleep(0.5)  # they wait for the job's loading to finish
        finish_loading(store_url, job, everyone)
        for process in processes:
            status, err = await finish(process)
            assert status == 0, err
        nursery.cancel_scope.cancel()

    copies = received(sink)
    assert set(copies) == set(everyone)
    assert max(copies.values()) == 1
    assert set(senders_by_source(sink)) == set(sources)  # every worker sent some
    with PgStore(store_url) as store:
        assert store.get_job(job).state == "done"
        assert store.counts(job) == {Status.DELIVERED: len(everyone)}
    assert column(store_url, "SELECT count(*) FROM recipients WHERE lease_owner IS NOT NULL"
                             " OR possible_duplicate") == [0]


@pytest.mark.parametrize("seed", [1, 2])
async def test_killed_worker_is_taken_over_nothing_lost_duplicates_flagged(
    store_url: str, seed: int,
) -> None:
    rng = random.Random(seed)
    everyone = addresses(1200, 8)
    job = create_loading_job(store_url, max_rcpts=5)
    lease = ("--lease", "2s", "--connections", "2", "--claim-size", "10", "--max-leased", "80")
    async with trio.open_nursery() as nursery:
        # a long round trip: many transactions are between end of data and reply
        sink = await start_sink(nursery, record_messages=True, latency=0.05)
        victim = await start_worker(store_url, job, sink, "127.0.0.2", *lease)
        others = [await start_worker(store_url, job, sink, f"127.0.0.{i}", *lease)
                  for i in (3, 4)]
        finish_loading(store_url, job, everyone)
        # let the victim work a while (the seed decides how long), then kill it
        # at a moment it holds recipients in doubt
        await trio.sleep(rng.uniform(0.3, 1.5))
        owner = f"%:{victim.pid}:%"
        with trio.fail_after(30):
            while not column(store_url, "SELECT count(*) FROM recipients WHERE state = 'in_doubt'"
                                        f" AND lease_owner LIKE '{owner}'")[0]:
                await trio.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        await victim.wait()
        in_doubt = set(column(store_url, "SELECT address FROM recipients WHERE state = 'in_doubt'"
                                         f" AND lease_owner LIKE '{owner}'"))
        assert in_doubt
        for process in others:
            status, err = await finish(process)
            assert status == 0, err
        nursery.cancel_scope.cancel()

    copies = received(sink)
    assert set(copies) == set(everyone)  # nobody lost
    duplicated = {a for a, n in copies.items() if n > 1}
    assert max(copies.values()) <= 2
    assert duplicated <= in_doubt  # only the dead worker's in-doubt recipients
    with PgStore(store_url) as store:
        assert store.counts(job) == {Status.DELIVERED: len(everyone)}
        flagged = {r.address for r in store.journal(job).iter_records() if r.possible_duplicate}
    assert flagged == in_doubt  # every resent one flagged, and no other


async def test_worker_that_loses_the_database_stops_and_loses_nothing(store_url: str) -> None:
    everyone = addresses(400, 4)
    job = create_loading_job(store_url, max_rcpts=5)
    name = f"bulkmail_victim_{job}_{os.getpid()}"
    lease = ("--lease", "2s", "--connections", "2", "--claim-size", "10", "--max-leased", "80")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.05)
        # libpq's application_name tells this worker's connections apart
        victim = await start_worker(f"{store_url}&application_name={name}", job, sink,
                                    "127.0.0.2", *lease)
        finish_loading(store_url, job, everyone)
        with trio.fail_after(30):
            while len(sink.messages) < 20:
                await trio.sleep(0.01)
        assert travel(store_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE application_name = %s", (name,)) == STORE_CONNECTIONS
        status, err = await finish(victim)
        assert status == 75, err
        assert "lost the database connection" in err and err.count("\n") == 1, err
        assert len(received(sink)) < len(everyone)  # it stopped midway
        survivor = await start_worker(store_url, job, sink, "127.0.0.3", *lease)
        status, err = await finish(survivor)
        assert status == 0, err
        nursery.cancel_scope.cancel()

    copies = received(sink)
    assert set(copies) == set(everyone)  # nobody lost
    with PgStore(store_url) as store:
        assert store.counts(job) == {Status.DELIVERED: len(everyone)}
        flagged = {r.address for r in store.journal(job).iter_records() if r.possible_duplicate}
    assert {a for a, n in copies.items() if n > 1} <= flagged  # any second copy flagged
