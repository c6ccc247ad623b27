"""Store rules fixed after the first workers ran: a recipient in doubt twice is
final (never handed out again, the job can end), and one worker's heartbeat
and group commit, on two connections, never deadlock on the rows they share."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator

import pytest

from bulkmail.journal import Outcome, Status
from bulkmail.store import PgStore
from tests.pgutil import pg_url, store_url, travel

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest


@pytest.fixture
def store(store_url: str) -> Iterator[PgStore]:
    with PgStore(store_url) as s:
        yield s


def test_in_doubt_twice_is_final_in_the_store(store_url: str, store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, ["a@x.example", "b@x.example"])
    assert store.claim("w", 10, 30, job=job) is not None
    final = Outcome(Status.IN_DOUBT, 451, "4.4.2", "in doubt again", 2, "mx",
                    next_attempt=math.inf, possible_duplicate=True)
    store.complete("w", job, [(["a@x.example"], final)])
    assert not store.finish_if_done(job)  # b is still out
    store.complete("w", job, [(["b@x.example"], Outcome(Status.DELIVERED, 250, attempts=1))])
    travel(store_url, "UPDATE recipients SET lease_expires = now() - interval '1 hour'")
    assert store.claim("w2", 10, 30, job=job) is None  # never handed out again
    assert store.finish_if_done(job)
    assert store.counts(job) == {Status.IN_DOUBT: 1, Status.DELIVERED: 1}
    record = store.journal(job).lookup(["a@x.example"])["a@x.example"]
    assert (record.status, record.possible_duplicate, record.code) == (Status.IN_DOUBT, True, 451)


def test_a_mark_before_end_of_data_is_not_final(store_url: str, store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, ["a@x.example"])
    assert store.claim("dead", 10, 30, job=job) is not None
    store.mark_in_doubt("dead", job, ["a@x.example"])
    assert not store.finish_if_done(job)
    travel(store_url, "UPDATE recipients SET lease_expires = now() - interval '1 hour'")
    taken = store.claim("alive", 10, 30, job=job)
    assert taken is not None and taken.recipients[0].possible_duplicate


def test_heartbeat_and_group_commit_never_deadlock(store_url: str, store: PgStore) -> None:
    # rows whose physical order (load order) differs from their address order:
    # the commit's and the heartbeat's scans met them in different orders
    everyone = [f"user{i}@x.example" for i in range(400)]
    random.Random(7).shuffle(everyone)
    job = store.create_job()
    store.load_recipients(job, everyone)
    assert store.claim("w", 1000, 30, job=job) is not None
    errors: list[BaseException] = []
    rounds = 60

    def beat() -> None:
        with PgStore(store_url) as s:
            for _ in range(rounds):
                try:
                    s.heartbeat("w", 30)
                except BaseException as exc:  # deadlock detected, before the fix
                    errors.append(exc)

    def commit() -> None:
        rng = random.Random(1)
        with PgStore(store_url) as s:
            for _ in range(rounds):
                writes = [(job, rng.sample(everyone, 150),
                           Outcome(Status.IN_DOUBT), False) for _ in range(2)]
                try:
                    s.commit_writes("w", writes)
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=beat), threading.Thread(target=commit)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
