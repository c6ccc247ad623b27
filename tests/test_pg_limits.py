"""Per-destination limits held in PostgreSQL for every worker together: connection
seats, GCRA rate, shared pause."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
import trio

from bulkmail.delivery.limiter import SharedDestination
from bulkmail.store import PgStore
from bulkmail.store.aio import AsyncStore
from bulkmail.store.limiter import PgDestinationLimiter
from tests.pgutil import pg_url, store_url, travel

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest


@pytest.fixture
def store(store_url: str) -> Iterator[PgStore]:
    with PgStore(store_url) as s:
        yield s


# seats


def test_seats_never_exceed_the_cap_under_concurrent_acquirers(store_url: str) -> None:
    cap, workers, rounds = 3, 6, 40
    lock = threading.Lock()
    held: dict[int, str] = {}  # slot -> holder, as the holders see it
    most = 0
    errors: list[str] = []
    barrier = threading.Barrier(workers)

    def work(owner: str) -> None:
        nonlocal most
        rng = random.Random(owner)
        with PgStore(store_url) as s:
            barrier.wait()
            for _ in range(rounds):
                slots = s.acquire_seats("mx.example", cap, owner, 30, count=rng.randint(1, 2))
                with lock:
                    for slot in slots:
                        if slot in held:
                            errors.append(f"slot {slot} given to {owner} while {held[slot]} has it")
                        held[slot] = owner
                    most = max(most, len(held))
                with lock:
                    for slot in slots:
                        del held[slot]
                s.release_seats("mx.example", slots, owner)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert most <= cap
    assert travel(store_url, "SELECT 1 FROM seats WHERE holder IS NOT NULL") == 0


def test_a_dead_workers_seats_come_back(store_url: str, store: PgStore) -> None:
    assert store.acquire_seats("mx.example", 2, "dead", 30, count=5) == [0, 1]
    assert store.acquire_seats("mx.example", 2, "alive", 30) == []
    travel(store_url, "UPDATE seats SET expires = now() - interval '1 second'"
                      " WHERE holder = 'dead'")
    travel(store_url, "UPDATE seat_wants SET until = now() - interval '1 second'"
                      " WHERE holder = 'dead'")  # long gone, as the lease's time went by
    assert store.acquire_seats("mx.example", 2, "alive", 30, count=2) == [0, 1]
    assert store.release_seats("mx.example", [0, 1], "dead") == 0  # not its seats any more


def test_a_heartbeat_keeps_the_seats(store_url: str, store: PgStore) -> None:
    assert store.acquire_seats("mx.example", 1, "w1", 30) == [0]
    travel(store_url, "UPDATE seats SET expires = now() - interval '1 second'")
    store.heartbeat("w1", 30)
    assert store.acquire_seats("mx.example", 1, "w2", 30) == []


def test_a_raised_cap_adds_seats_and_a_lowered_one_hands_out_fewer(store: PgStore) -> None:
    assert store.acquire_seats("mx.example", 1, "w1", 30) == [0]
    assert store.acquire_seats("mx.example", 3, "w2", 30, count=3) == [1, 2]
    store.release_seats("mx.example", [0, 1, 2], "w1")
    store.release_seats("mx.example", [1, 2], "w2")
    assert store.acquire_seats("mx.example", 2, "w3", 30, count=3) == [0, 1]


def test_while_another_worker_wants_seats_each_keeps_to_a_fair_share(
    store_url: str, store: PgStore,
) -> None:
    caps = {"mx.example": 4}
    assert store.acquire_seats("mx.example", 4, "first", 30, count=4) == [0, 1, 2, 3]
    assert store.seat_surplus("first", caps) == {"mx.example": 0}  # nobody else wants
    assert store.acquire_seats("mx.example", 4, "second", 30) == []  # says it wants
    assert store.seat_surplus("first", caps) == {"mx.example": 2}  # 4 held, a share of 2
    store.release_seats("mx.example", [2, 3], "first")  # the surplus sessions end
    assert store.acquire_seats("mx.example", 4, "first", 30) == []  # not beyond its share
    assert store.acquire_seats("mx.example", 4, "second", 30, count=4) == [2, 3]
    assert store.seat_surplus("first", caps) == {"mx.example": 0}
    # the second stops wanting (its want lapses): the first may take what is free
    store.release_seats("mx.example", [2, 3], "second")
    travel(store_url, "UPDATE seat_wants SET until = now() - interval '1 second'")
    assert store.acquire_seats("mx.example", 4, "first", 30, count=2) == [2, 3]


async def test_the_limiter_learns_its_surplus_and_counts_seats_given_back(
    store_url: str, store: PgStore,
) -> None:
    astore = await AsyncStore.open(store_url, connections=1)
    limiter = PgDestinationLimiter(astore, "first", 30)
    shared = SharedDestination(limiter, "mx.example")
    seats = [await limiter.acquire("mx.example", 2) for _ in range(2)]
    assert None not in seats
    assert store.acquire_seats("mx.example", 2, "second", 30) == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.keep_shares, 0.01)
        with trio.fail_after(10):
            while not shared.surplus():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert limiter.surplus("mx.example") == 1
    await shared.release(seats[0])  # one session ended: no surplus left
    assert not shared.surplus()
    await astore.aclose()


# rate


def test_gcra_holds_the_rate_for_all_workers_together(store: PgStore) -> None:
    """Three workers asking as fast as they like, over a minute of fake time:
    together they get the rate (plus the burst), not three times it."""
    rate, burst, seconds = 20.0, 5, 60.0
    rng = random.Random(7)
    now, granted = 1_000.0, 0
    sent_at: list[float] = []
    while now < 1_000.0 + seconds:
        for _worker in rng.sample(range(3), 3):
            grant = store.take_tokens("mx.example", rate, burst, rng.randint(1, 10), now=now)
            granted += grant.granted
            sent_at += [now] * grant.granted
            assert grant.granted or grant.wait > 0
        now += rng.uniform(0.001, 0.2)
    assert rate * seconds - burst <= granted <= rate * seconds + burst
    for start in range(0, len(sent_at), 97):  # any window: at most its share plus a burst
        window = [t for t in sent_at if sent_at[start] <= t < sent_at[start] + 5.0]
        assert len(window) <= rate * 5.0 + burst


def test_a_refusal_says_when_the_next_token_comes(store: PgStore) -> None:
    assert store.take_tokens("mx.example", 10, 3, 10, now=50.0).granted == 3
    refused = store.take_tokens("mx.example", 10, 3, 1, now=50.0)
    assert refused.granted == 0 and refused.wait == pytest.approx(0.1)
    assert store.take_tokens("mx.example", 10, 3, 1, now=50.0 + refused.wait).granted == 1


def test_concurrent_takers_share_one_burst(store_url: str) -> None:
    """Eight connections asking at the same instant get the burst between them."""
    results: list[int] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        with PgStore(store_url) as s:
            barrier.wait()
            results.append(s.take_tokens("mx.example", 1.0, 10, 4, now=5_000.0).granted)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 10


def test_destinations_have_their_own_rates(store: PgStore) -> None:
    assert store.take_tokens("a.example", 1, 1, 1, now=0.0).granted == 1
    assert store.take_tokens("b.example", 1, 1, 1, now=0.0).granted == 1
    assert store.take_tokens("a.example", 1, 1, 1, now=0.0).granted == 0


# pause


def test_one_workers_pause_holds_for_every_worker(store_url: str, store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, ["a@paused.example", "b@other.example"])
    pause = store.pause_destination("paused.example", 300, code=421, enhanced="4.7.0",
                                    reply="too many connections")
    with PgStore(store_url) as other:
        seen = other.paused("paused.example")
        assert seen == pause and seen.code == 421
        first = other.claim("w2", 10, 30, job=job)
        assert first is not None and first.destination == "other.example"
        assert other.claim("w2", 10, 30, job=job) is None
        assert other.acquire_seats("paused.example", 5, "w2", 30) == []
        # a shorter pause does not shorten it
        assert other.pause_destination("paused.example", 1).until == pause.until
        travel(store_url, "UPDATE destinations SET paused_until = now() - interval '1 second'")
        assert other.paused("paused.example") is None
        resumed = other.claim("w2", 10, 30, job=job)
        assert resumed is not None and resumed.destination == "paused.example"
        assert other.acquire_seats("paused.example", 5, "w2", 30) == [0]
