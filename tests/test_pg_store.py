"""The PostgreSQL job store against a real server: schema, COPY, claims, leases,
takeover, the Journal view, lost connections."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from bulkmail.journal import Journal, Outcome, StateChange, Status
from bulkmail.message import Recipient
from bulkmail.store import ConnectionLost, PgJournal, PgStore, StoreError, open_pg_journal
from bulkmail.store.schema import SCHEMA_VERSION, migrate, schema_version
from bulkmail.store.store import split_store_url
from tests.pgutil import pg_url, store_url, travel

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

DELIVERED = Outcome(Status.DELIVERED, 250, "2.0.0", "queued", 1, "mx.example")


@pytest.fixture
def store(store_url: str) -> Iterator[PgStore]:
    with PgStore(store_url) as s:
        yield s


def expire_leases(store_url: str, owner: str) -> int:
    return travel(
        store_url,
        "UPDATE recipients SET lease_expires = now() - interval '1 second'"
        " WHERE lease_owner = %s",
        (owner,),
    )


def addresses(n: int, domains: int = 5) -> list[str]:
    return [f"user{i}@d{i % domains}.example" for i in range(n)]


# schema


def test_opening_twice_migrates_once(store_url: str) -> None:
    with PgStore(store_url) as first:
        assert schema_version(first.db) == SCHEMA_VERSION
        assert migrate(first.db) == SCHEMA_VERSION  # found current: nothing applied
    with PgStore(store_url) as second, second.db.using() as conn:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_workers_starting_together_migrate_once(store_url: str) -> None:
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []
    stores: list[PgStore] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PgStore(store_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with stores[0].db.using() as conn:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    for s in stores:
        s.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_newer_schema_is_refused(store_url: str) -> None:
    PgStore(store_url).close()
    travel(store_url, "INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}"):
        PgStore(store_url)


def test_a_bad_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot connect to postgresql://nobody:\\*\\*\\*@"):
        PgStore("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2")


# loading


def test_copy_loads_recipients_with_their_variables(store: PgStore) -> None:
    job = store.create_job(identity={"sender": "news@example.com"}, options={"max_rcpts": 50})
    odd = {"name": "Tab\there, back\\slash, new\nline, quote \" and ünïcode"}
    recipients: list[Recipient | str] = [
        Recipient("a@x.example", odd), "b@X.Example", "a@x.example", Recipient("c@y.example"),
        *addresses(20_000),
    ]
    assert store.load_recipients(job, recipients) == 20_003  # the repeat kept once
    assert store.counts(job) == {Status.PENDING: 20_003}
    claim = store.claim("w", 10, 30, job=job)
    assert claim is not None
    seen = {r.address: r for r in claim.recipients}
    while (more := store.claim("w", 1000, 30, job=job)) is not None:
        seen.update({r.address: r for r in more.recipients})
    assert seen["a@x.example"].variables == odd
    assert seen["b@X.Example"].variables is None
    assert len(seen) == 20_003
    journal = store.journal(job)
    assert journal.top_domains(2) == [("d0.example", 4000), ("d1.example", 4000)]
    info = store.get_job(job)
    assert (info.state, info.identity, info.options) == (
        "active", {"sender": "news@example.com"}, {"max_rcpts": 50})


def test_loading_an_address_twice_adds_nothing(store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, ["a@x.example"])
    with pytest.raises(StoreError, match="duplicate key"):
        store.load_recipients(job, ["b@x.example", "a@x.example"])
    assert store.counts(job) == {Status.PENDING: 1}


def test_loading_into_an_unknown_job_fails(store: PgStore) -> None:
    with pytest.raises(StoreError, match="no job 12345"):
        store.load_recipients(12345, ["a@x.example"])


# claims and leases


def test_a_claim_takes_one_destination_and_rotates(store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(30, domains=3))
    first = store.claim("w", 4, 30, job=job)
    second = store.claim("w", 100, 30, job=job)
    assert first is not None and second is not None
    assert len(first) == 4 and len(second) == 10
    for claim in (first, second):
        assert {r.address.partition("@")[2] for r in claim.recipients} == {claim.destination}
    assert first.destination != second.destination  # least recently claimed first


def test_one_claim_statement_takes_many_destinations_within_its_bounds(store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(60, domains=6))  # 10 per domain
    claims = store.claim_many("w", 4, 30, job=job, max_items=14, max_destinations=5)
    # 4 of each destination, 14 in all: the fourth destination gives only 2,
    # and the fifth none (it is not read)
    assert sorted(len(c) for c in claims) == [2, 4, 4, 4]
    for claim in claims:
        assert {r.address.partition("@")[2] for r in claim.recipients} == {claim.destination}
    # the destinations that gave rows went to the back of the rotation: the
    # next statement takes the two never claimed first, then one of those
    again = store.claim_many("w", 100, 30, job=job, max_items=100, max_destinations=3)
    first = {c.destination for c in claims}
    assert {f"d{i}.example" for i in range(6)} - first < {c.destination for c in again}
    assert len({c.destination for c in again} & first) == 1
    taken = [r.address for c in (*claims, *again) for r in c.recipients]
    assert len(taken) == len(set(taken))  # none twice


def test_a_claim_that_must_wait_for_a_lock_waits_for_one_destination(
    store_url: str, store: PgStore,
) -> None:
    # holding one destination while waiting for a second could deadlock with a
    # claimer that saw the rotation in another order: the waiting try takes one
    job = store.create_job()
    store.load_recipients(job, addresses(12, domains=3))
    conninfo, schema, _ = split_store_url(store_url)
    got: list[list[int]] = []
    with psycopg.connect(conninfo) as holder:  # a transaction holding every destination
        holder.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        holder.execute("SELECT * FROM job_destinations FOR UPDATE")

        def claim() -> None:
            with PgStore(store_url) as s:
                found = s.claim_many("w", 100, 30, job=job, max_items=100, max_destinations=3)
                got.append([len(c) for c in found])

        waiter = threading.Thread(target=claim)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # the tries that skip locked rows found nothing: it waits
        holder.commit()
    waiter.join()
    assert got == [[4]]  # one destination's four


def test_concurrent_claimers_never_get_the_same_recipient(store_url: str) -> None:
    with PgStore(store_url) as setup:
        job = setup.create_job()
        everyone = addresses(3000, domains=4)
        setup.load_recipients(job, everyone)
    got: dict[str, list[str]] = {}
    barrier = threading.Barrier(3)

    def work(owner: str) -> None:
        mine: list[str] = []
        with PgStore(store_url) as s:
            barrier.wait()
            while (claim := s.claim(owner, 50, 30, job=job)) is not None:
                batch = [r.address for r in claim.recipients]
                mine += batch
                assert s.complete(owner, job, [(batch, DELIVERED)]) == set()
        got[owner] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [a for mine in got.values() for a in mine]
    assert sorted(claimed) == sorted(everyone)  # everyone once: no repeats, none left
    assert all(got.values())  # every claimer got work
    with PgStore(store_url) as s:
        assert s.counts(job) == {Status.DELIVERED: 3000}
        assert s.finish_if_done(job)


def test_an_expired_lease_is_taken_over_and_in_doubt_ones_are_flagged(
    store_url: str, store: PgStore,
) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(6, domains=1))
    dead = store.claim("dead", 10, 30, job=job)
    assert dead is not None
    all6 = [r.address for r in dead.recipients]
    in_doubt = set(all6[:2])
    assert store.mark_in_doubt("dead", job, sorted(in_doubt)) == in_doubt
    assert store.claim("alive", 10, 30, job=job) is None  # still leased
    assert expire_leases(store_url, "dead") == 6  # "dead" stopped heartbeating

    taken = store.claim("alive", 10, 30, job=job)
    assert taken is not None
    flags = {r.address: (r.status, r.possible_duplicate) for r in taken.recipients}
    assert flags == {
        a: (Status.IN_DOUBT, True) if a in in_doubt else (Status.PENDING, False) for a in all6
    }
    # the old owner, back, can neither mark nor overwrite what it lost
    assert store.mark_in_doubt("dead", job, all6) == set()
    assert store.complete("dead", job, [(all6, DELIVERED)]) == set(all6)
    bounced = Outcome(Status.BOUNCED, 550, "5.1.1", "no such user", 1, "mx")
    assert store.complete("alive", job, [(all6, bounced)]) == set()
    records = store.journal(job).lookup(all6)
    assert {a: (r.status, r.possible_duplicate) for a, r in records.items()} == {
        a: (Status.BOUNCED, a in in_doubt) for a in all6
    }
    assert store.claim("alive", 10, 30, job=job) is None  # results released the leases


def test_a_heartbeat_keeps_the_lease(store_url: str, store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(3, domains=1))
    assert store.claim("w1", 10, 30, job=job) is not None
    expire_leases(store_url, "w1")
    assert store.heartbeat("w1", 30) == 3  # nobody took them meanwhile: still w1's
    assert store.claim("w2", 10, 30, job=job) is None


def test_deferred_recipients_wait_for_their_next_attempt(
    store_url: str, store: PgStore,
) -> None:
    job = store.create_job()
    store.load_recipients(job, ["a@x.example", "b@x.example"])
    claim = store.claim("w", 10, 30, job=job)
    assert claim is not None
    later = Outcome(Status.DEFERRED, 451, "4.7.1", "try later", 1, "mx", next_attempt=4e9)
    never = Outcome(Status.DEFERRED, 451, "4.7.1", "gave up", 3, "mx", next_attempt=None)
    store.complete("w", job, [(["a@x.example"], later), (["b@x.example"], never)])
    assert store.claim("w", 10, 30, job=job) is None
    assert not store.finish_if_done(job)  # a still has a retry coming
    known = store.journal(job).lookup(["a@x.example", "b@x.example"])
    assert [known[a].next_attempt for a in ("a@x.example", "b@x.example")] == [4e9, None]
    travel(store_url, "UPDATE recipients SET next_attempt = now() WHERE isfinite(next_attempt)")
    again = store.claim("w", 10, 30, job=job)
    assert again is not None
    assert [(r.address, r.status, r.attempts) for r in again.recipients] == [
        ("a@x.example", Status.DEFERRED, 1)]
    store.complete("w", job, [(["a@x.example"], Outcome(Status.DELIVERED, 250, attempts=2))])
    assert store.finish_if_done(job)  # b is deferred for good: nothing more to send
    assert store.get_job(job).state == "done"


def test_a_cancelled_job_hands_out_nothing(store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(5))
    assert store.cancel_job(job)
    assert not store.cancel_job(job)
    assert store.claim("w", 10, 30, job=job) is None
    assert store.get_job(job).state == "cancelled"
    with pytest.raises(StoreError, match="no job 999999"):
        store.cancel_job(999999)


def test_claims_without_a_job_take_from_every_active_job(store: PgStore) -> None:
    one, two = store.create_job(), store.create_job()
    store.load_recipients(one, ["a@x.example"])
    store.load_recipients(two, ["b@y.example"])
    jobs = set()
    while (claim := store.claim("w", 10, 30)) is not None:
        jobs.add(claim.job)
    assert jobs == {one, two}


def test_releasing_gives_unsent_recipients_back(store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(4, domains=1))
    claim = store.claim("w1", 10, 30, job=job)
    assert claim is not None
    assert store.release("w1", job, [claim.recipients[0].address]) == 1
    assert store.release("w1") == 3
    again = store.claim("w2", 10, 30, job=job)
    assert again is not None and len(again) == 4


# the Journal view


def test_the_journal_view_follows_the_journal_rules(store: PgStore) -> None:
    job = store.create_job()
    journal: Journal = store.journal(job)
    assert journal.is_empty()
    journal.record([
        StateChange("a@x.example", Status.DEFERRED, 451, "4.3.0", "busy", 1, "mx1", 1e9),
        StateChange("b@y.example", Status.DELIVERED, 250, None, "ok", 1, "mx2"),
    ])
    journal.record_outcomes([
        (["a@x.example"], Outcome(Status.IN_DOUBT)),  # nothing new but the state
        (["c@x.example", "d@x.example"], Outcome(Status.BOUNCED, 550, "5.1.1", "unknown", 2)),
    ])
    journal.record([StateChange("c@x.example", Status.BOUNCED, attempts=1,
                                possible_duplicate=True)])
    journal.record([StateChange("c@x.example", Status.BOUNCED, 550, "5.1.1", "unknown", 1)])
    got = journal.lookup(["a@x.example", "c@x.example", "zz@none"])
    a, c = got["a@x.example"], got["c@x.example"]
    assert set(got) == {"a@x.example", "c@x.example"}
    assert (a.status, a.code, a.enhanced, a.reply, a.host, a.next_attempt) == (
        Status.IN_DOUBT, 451, "4.3.0", "busy", "mx1", None)
    assert (c.attempts, c.possible_duplicate) == (2, True)  # never decrease, stays raised
    assert not journal.is_empty()
    assert journal.counts() == {Status.IN_DOUBT: 1, Status.DELIVERED: 1, Status.BOUNCED: 2}
    assert journal.top_domains() == [("x.example", 3), ("y.example", 1)]
    assert journal.top_codes() == [("550 5.1.1", 2), ("250", 1), ("451 4.3.0", 1)]
    journal.set_meta("sender", "news@example.com")
    journal.set_meta("sender", "other@example.com")
    assert journal.get_meta("sender") == "other@example.com"
    assert journal.get_meta("nothing") is None


def test_iter_records_streams_every_record_in_address_order(store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(2500))
    records = list(store.journal(job).iter_records())
    assert [r.address for r in records] == sorted(addresses(2500))


def test_a_journal_url_names_its_job(store_url: str, store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, ["a@x.example"])
    with open_pg_journal(f"{store_url}&job={job}") as journal:
        assert isinstance(journal, PgJournal)
        assert journal.counts() == {Status.PENDING: 1}
    with pytest.raises(StoreError, match=r"needs \?job=ID"):
        open_pg_journal(store_url)
    with pytest.raises(StoreError, match="no job 424242"):
        open_pg_journal(f"{store_url}&job=424242")


# a lost connection


def test_a_lost_connection_raises_and_keeps_raising(pg_url: str, store: PgStore) -> None:
    job = store.create_job()
    store.load_recipients(job, addresses(3))
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.db.backend_pid,))
    with pytest.raises(ConnectionLost, match="lost the database connection to postgresql://"):
        store.claim("w", 10, 30, job=job)
    with pytest.raises(ConnectionLost):
        store.heartbeat("w", 30)  # never silently reconnected
