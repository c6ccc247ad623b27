"""The journal: durable recipient states, group commits, recovery after a kill
or a torn write."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from bulkmail.journal import (
    FINAL,
    JournalError,
    JournalWriter,
    Outcome,
    RecipientRecord,
    SQLiteJournal,
    StateChange,
    Status,
)
from bulkmail.journal.sqlite import SCHEMA_VERSION
from bulkmail.journal.writer import MAX_BATCH, MAX_BATCH_THREADED


def delivered(address: str, *, possible_duplicate: bool = False) -> StateChange:
    return StateChange(address, Status.DELIVERED, 250, "2.0.0", "ok", 1, "mx.test",
                       possible_duplicate=possible_duplicate)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SQLiteJournal]:
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        yield journal


def statuses_seen_by_another_connection(path: Path) -> dict[str, str]:
    # a second connection, as a resumed run (or a crash survivor) would read it
    with SQLiteJournal(path) as other:
        return {r.address: r.status.value for r in other.iter_records()}


# -- SQLiteJournal ---------------------------------------------------------------


def test_record_and_lookup_round_trip(journal: SQLiteJournal) -> None:
    before = time.time()
    journal.record([
        StateChange("a@x.test", Status.DEFERRED, 451, "4.7.1", "greylisted", 2, "mx1.x.test",
                    next_attempt=1e9, possible_duplicate=True),
        StateChange("b@y.test", Status.IN_DOUBT),
    ])
    found = journal.lookup(["a@x.test", "b@y.test", "unknown@x.test"])
    assert set(found) == {"a@x.test", "b@y.test"}
    a = found["a@x.test"]
    assert a == RecipientRecord("a@x.test", Status.DEFERRED, 451, "4.7.1", "greylisted", 2,
                                "mx1.x.test", 1e9, True, a.updated_at)
    assert before <= a.updated_at <= time.time()
    assert found["b@y.test"].status is Status.IN_DOUBT and found["b@y.test"].code is None
    assert journal.lookup([]) == {}


def test_last_write_per_address_wins_within_one_batch(journal: SQLiteJournal) -> None:
    journal.record([
        StateChange("a@x.test", Status.IN_DOUBT),
        delivered("b@x.test"),
        StateChange("a@x.test", Status.DEFERRED, 451, "4.7.1", "later", 1),
        StateChange("a@x.test", Status.BOUNCED, 550, "5.1.1", "no such user", 2),
    ])
    a = journal.lookup(["a@x.test"])["a@x.test"]
    assert (a.status, a.code, a.enhanced, a.reply, a.attempts) == (
        Status.BOUNCED, 550, "5.1.1", "no such user", 2)
    assert journal.counts() == {Status.BOUNCED: 1, Status.DELIVERED: 1}


def test_upsert_across_batches_merges_what_a_change_leaves_out(journal: SQLiteJournal) -> None:
    journal.record([StateChange("a@x.test", Status.DEFERRED, 451, "4.7.1", "later", 1, "mx1",
                                next_attempt=100.0)])
    journal.record([StateChange("a@x.test", Status.IN_DOUBT, possible_duplicate=True)])
    doubt = journal.lookup(["a@x.test"])["a@x.test"]
    # no new reply: the last one is kept; the retry time is the new change's (none)
    assert (doubt.status, doubt.code, doubt.reply, doubt.attempts, doubt.host) == (
        Status.IN_DOUBT, 451, "later", 1, "mx1")
    assert doubt.next_attempt is None and doubt.possible_duplicate
    journal.record([StateChange("a@x.test", Status.DELIVERED, 250, None, "ok", 2, "mx2")])
    done = journal.lookup(["a@x.test"])["a@x.test"]
    assert (done.status, done.code, done.enhanced, done.reply, done.attempts, done.host) == (
        Status.DELIVERED, 250, None, "ok", 2, "mx2")
    assert done.possible_duplicate  # the duplicate flag survives the final state
    assert done.updated_at >= doubt.updated_at


def test_addresses_are_stored_exactly_as_given(journal: SQLiteJournal) -> None:
    journal.record([delivered("Bob@x.test"), StateChange("bob@x.test", Status.BOUNCED)])
    found = journal.lookup(["Bob@x.test", "bob@x.test", "BOB@x.test"])
    assert {a: r.status for a, r in found.items()} == {
        "Bob@x.test": Status.DELIVERED, "bob@x.test": Status.BOUNCED}


def test_lookup_of_more_addresses_than_sqlite_variables(journal: SQLiteJournal) -> None:
    journal.record([delivered(f"u{i}@x.test") for i in range(0, 70_000, 2)])
    wanted = [f"u{i}@x.test" for i in range(70_000)] + ["u0@x.test"]  # a duplicate, too
    found = journal.lookup(wanted)
    assert set(found) == {f"u{i}@x.test" for i in range(0, 70_000, 2)}


def test_counts_top_domains_and_top_codes(journal: SQLiteJournal) -> None:
    journal.record(
        [delivered(f"u{i}@big.test") for i in range(5)]
        + [delivered(f"u{i}@mid.test") for i in range(2)]
        + [StateChange("x@small.test", Status.BOUNCED, 550, "5.1.1", "no such user"),
           StateChange("y@mid.test", Status.DEFERRED, 421),
           StateChange("z@mid.test", Status.IN_DOUBT)]
    )
    assert journal.counts() == {Status.DELIVERED: 7, Status.BOUNCED: 1, Status.DEFERRED: 1,
                                Status.IN_DOUBT: 1}
    assert journal.top_domains() == [("big.test", 5), ("mid.test", 4), ("small.test", 1)]
    assert journal.top_domains(1) == [("big.test", 5)]
    assert journal.top_codes() == [("250 2.0.0", 7), ("421", 1), ("550 5.1.1", 1)]
    assert journal.top_codes(1) == [("250 2.0.0", 7)]
    assert Status.BOUNCED in FINAL and Status.DEFERRED not in FINAL  # re-exported


def test_a_shared_outcome_is_one_appended_row_until_a_reader_folds_it(
    journal: SQLiteJournal,
) -> None:
    sent = Outcome(Status.DELIVERED, 250, "2.0.0", "queued", 1, "mx.test")
    addresses = [f"u{i}@x.test" for i in range(50)]
    journal.record_outcomes([(addresses, Outcome(Status.IN_DOUBT)), (addresses, sent)])
    assert journal._db.execute("SELECT count(*) FROM events").fetchone() == (2,)
    assert journal._db.execute("SELECT count(*) FROM recipients").fetchone() == (0,)
    assert not journal.is_empty()  # appended events count before any fold
    found = journal.lookup(addresses)  # a reader folds first
    assert {r.status for r in found.values()} == {Status.DELIVERED} and len(found) == 50
    assert journal._db.execute("SELECT count(*) FROM events").fetchone() == (0,)


@pytest.mark.parametrize("addresses", [
    ["a@x.test", "b@x.test"],
    ['"quoted \\"inner\\" local"@x.test', "plain@x.test"],
    ['a","b@x.test'],  # the array separator inside an address
    ["back\\slash@x.test", "tab\tin@x.test", "nul\x00@x.test"],
    ["Ünïcode@bücher.test", "日本@例え.テスト"],
    ["del\x7f@x.test", "line\u2028sep@x.test", "nb\u00a0sp@x.test"],  # not printable
])
def test_any_address_survives_the_events_log(
    journal: SQLiteJournal, addresses: list[str]
) -> None:
    journal.record_outcomes([(addresses, Outcome(Status.BOUNCED, 550, "5.1.1", "no"))])
    found = journal.lookup(addresses)
    assert set(found) == set(addresses)
    assert all(r.status is Status.BOUNCED and r.code == 550 for r in found.values())


def test_the_domain_is_what_follows_the_last_at_sign(journal: SQLiteJournal) -> None:
    journal.record([delivered('"a@b"@Example.TEST'), delivered("no-at-sign"),
                    delivered("Ünïcode@Bücher.TEST")])
    assert sorted(journal.top_domains()) == [("", 1), ("bücher.test", 1), ("example.test", 1)]
    assert set(journal.lookup(['"a@b"@Example.TEST', "Ünïcode@Bücher.TEST"])) == {
        '"a@b"@Example.TEST', "Ünïcode@Bücher.TEST"}


def test_a_version_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE recipients (address TEXT PRIMARY KEY, domain TEXT NOT NULL,"
        " status TEXT NOT NULL, code INTEGER, enhanced TEXT, reply TEXT,"
        " attempts INTEGER NOT NULL DEFAULT 0, host TEXT, next_attempt REAL,"
        " possible_duplicate INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL)"
        " WITHOUT ROWID;"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
        "INSERT INTO recipients VALUES ('a@x.test', 'x.test', 'in_doubt', NULL, NULL, NULL,"
        " 1, NULL, NULL, 0, 0);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    with SQLiteJournal(path) as journal:
        journal.record([delivered("b@x.test")])
        assert journal.counts() == {Status.IN_DOUBT: 1, Status.DELIVERED: 1}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_meta_is_stored_overwritten_and_kept(tmp_path: Path) -> None:
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        assert journal.get_meta("sender") is None
        journal.set_meta("sender", "old@x.test")
        journal.set_meta("sender", "news@x.test")
        journal.set_meta("message_sha256", "ab" * 32)
        assert journal.get_meta("sender") == "news@x.test"
    with SQLiteJournal(tmp_path / "j.sqlite") as reopened:
        assert reopened.get_meta("sender") == "news@x.test"
        assert reopened.get_meta("message_sha256") == "ab" * 32


def test_iter_records_streams_instead_of_fetching_all(journal: SQLiteJournal) -> None:
    n = 100_000
    journal.record([delivered(f"u{i:06d}@x.test") for i in range(n)])
    assert journal.counts() == {Status.DELIVERED: n}  # folds the appended events first
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    journal._db.set_progress_handler(count, 1000)  # one call per 1000 VM instructions
    stream = journal.iter_records()
    assert next(stream).address == "u000000@x.test"
    first_steps = steps
    rest = [r.address for r in stream]
    journal._db.set_progress_handler(None, 0)
    assert len(rest) == n - 1 and rest[-1] == f"u{n - 1:06d}@x.test" and rest == sorted(rest)
    assert first_steps * 20 < steps  # the first record came without reading the table


def test_is_empty(journal: SQLiteJournal) -> None:
    assert journal.is_empty()
    journal.set_meta("sender", "a@x.test")
    assert journal.is_empty()
    journal.record([StateChange("a@x.test", Status.PENDING)])
    assert not journal.is_empty()


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with SQLiteJournal(path, synchronous="FULL") as journal:
        journal.record([delivered(f"u{i}@x.test") for i in range(1000)])
        journal.record([StateChange("late@x.test", Status.DEFERRED, 451, next_attempt=5.0)])
        journal.set_meta("started_at", "123.5")
    assert not Path(f"{path}-wal").exists()  # a clean close checkpoints the WAL away
    with SQLiteJournal(path) as reopened:
        assert reopened.counts() == {Status.DELIVERED: 1000, Status.DEFERRED: 1}
        assert reopened.lookup(["late@x.test"])["late@x.test"].next_attempt == 5.0
        assert reopened.get_meta("started_at") == "123.5"


def test_synchronous_mode_is_applied_and_validated(tmp_path: Path) -> None:
    with SQLiteJournal(tmp_path / "full.sqlite", synchronous="FULL") as full:
        assert full._db.execute("PRAGMA synchronous").fetchone() == (2,)
        assert full._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with SQLiteJournal(tmp_path / "normal.sqlite") as normal:
        assert normal._db.execute("PRAGMA synchronous").fetchone() == (1,)
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteJournal(tmp_path / "x.sqlite", synchronous="OFF")  # type: ignore[arg-type]


def test_sigkill_keeps_every_batch_reported_committed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    script = textwrap.dedent(f"""
        from bulkmail.journal import SQLiteJournal, StateChange, Status
        j = SQLiteJournal({str(path)!r})
        batch = 0
        while True:
            j.record([StateChange(f"u{{batch}}-{{i}}@x.test", Status.DELIVERED)
                      for i in range(100)])
            print(batch, flush=True)
            batch += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = -1
    for line in proc.stdout:
        committed = int(line)
        if committed >= 30:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with SQLiteJournal(path) as journal:
        found = journal.lookup(
            [f"u{b}-{i}@x.test" for b in range(committed + 1) for i in range(100)])
        assert len(found) == (committed + 1) * 100


def test_a_torn_wal_keeps_every_transaction_before_the_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = SQLiteJournal(path)
    journal._db.execute("PRAGMA wal_autocheckpoint = 0")  # everything stays in the WAL
    wal = Path(f"{path}-wal")
    journal.record([delivered(f"a{i}@x.test") for i in range(50)])
    journal.record([delivered(f"b{i}@x.test") for i in range(50)])
    intact = wal.stat().st_size
    journal.record([delivered(f"c{i}@x.test") for i in range(50)])
    whole = wal.stat().st_size
    # the files as a crash in the middle of the third commit leaves them
    crash = tmp_path / "crash.sqlite"
    crash.write_bytes(path.read_bytes())
    Path(f"{crash}-wal").write_bytes(wal.read_bytes()[: intact + (whole - intact) // 2 + 7])
    journal.close()
    with SQLiteJournal(crash) as recovered:
        found = recovered.lookup([f"{p}{i}@x.test" for p in "abc" for i in range(50)])
        assert {a for a in found if a[0] in "ab"} == {f"{p}{i}@x.test" for p in "ab"
                                                     for i in range(50)}
        assert not any(a.startswith("c") for a in found)  # the torn transaction is gone, whole
        recovered.record([delivered("after@x.test")])  # and the journal is usable again
        assert recovered.counts() == {Status.DELIVERED: 101}


def test_a_corrupt_journal_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(JournalError, match=str(path)):
        SQLiteJournal(path)
    assert path.read_bytes() == garbage


def test_a_truncated_main_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with SQLiteJournal(path) as journal:
        journal.record([delivered(f"u{i:05d}@x.test") for i in range(20_000)])
    cut = path.read_bytes()[: path.stat().st_size // 2 + 100]
    path.write_bytes(cut)
    with pytest.raises(JournalError, match=str(path)):
        SQLiteJournal(path)
    assert path.read_bytes() == cut


def test_a_journal_from_a_newer_bulkmail_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteJournal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(JournalError, match="schema 99"):
        SQLiteJournal(path)


def test_a_closed_journal_raises_journal_error(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        journal.record([delivered("a@x.test")])
    with pytest.raises(JournalError):
        journal.lookup(["a@x.test"])


# -- JournalWriter ---------------------------------------------------------------


class CountingJournal(SQLiteJournal):
    """Counts group commits (one ``record`` call each) and their sizes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
        super().record_outcomes(groups)
        self.batches.append(sum(len(addresses) for addresses, _ in groups))


async def test_many_concurrent_submits_collapse_into_few_commits(tmp_path: Path) -> None:
    journal = CountingJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal, max_batch=500)

    async def sender(k: int) -> None:
        for i in range(100):
            writer.submit(delivered(f"t{k}-{i}@x.test"))
            if i % 10 == 0:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as senders:
            for k in range(50):
                senders.start_soon(sender, k)
        await writer.aclose()
    assert sum(journal.batches) == 5000 and max(journal.batches) <= 500
    assert len(journal.batches) <= 15 and writer.commits == len(journal.batches)
    assert journal.counts() == {Status.DELIVERED: 5000} and writer.pending == 0
    journal.close()


def _counting_groups(path: Path) -> tuple[CountingJournal, list[int]]:
    """A journal that notes the size of every group it is asked to record."""
    journal = CountingJournal(path)
    groups: list[int] = []
    record = journal.record_outcomes

    def counting(batch: Sequence[tuple[Sequence[str], Outcome]]) -> None:
        groups.extend(len(addresses) for addresses, _ in batch)
        record(batch)

    journal.record_outcomes = counting  # type: ignore[method-assign]
    return journal, groups


async def test_a_transactions_recipients_share_one_group(tmp_path: Path) -> None:
    journal, groups = _counting_groups(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    first, second = Outcome(Status.DELIVERED, 250), Outcome(Status.DELIVERED, 250)
    for i in range(30):
        writer.submit_outcome(f"a{i}@x.test", first)  # the same object: one group
    for i in range(20):
        writer.submit_outcome(f"b{i}@x.test", second)  # equal but another: a new group
    await writer.flush()
    assert groups == [30, 20] and journal.counts() == {Status.DELIVERED: 50}
    journal.close()


async def test_alternating_marks_and_results_are_two_rows_per_commit(tmp_path: Path) -> None:
    """A run's changes alternate (one transaction's mark, another's delivery):
    each outcome's submits merge into its open group across the others."""
    journal, groups = _counting_groups(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    mark, sent = Outcome(Status.IN_DOUBT), Outcome(Status.DELIVERED, 250)
    for i in range(40):
        writer.submit_outcome(f"a{i}@x.test", mark)
        if i:
            writer.submit_outcome(f"a{i - 1}@x.test", sent)  # the previous one's result
    await writer.flush()
    # the merged marks come first: a{i}'s delivery still follows its own mark
    assert groups == [40, 39]
    found = journal.lookup([f"a{i}@x.test" for i in range(40)])
    assert found.pop("a39@x.test").status is Status.IN_DOUBT
    assert {r.status for r in found.values()} == {Status.DELIVERED}
    journal.close()


async def test_a_change_never_merges_past_an_older_change_of_its_address(
    tmp_path: Path,
) -> None:
    """A retry's new mark must not land before its previous attempt's result:
    that would leave the address deferred while its end of data is in flight."""
    journal = CountingJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    mark = Outcome(Status.IN_DOUBT)
    deferred = Outcome(Status.DEFERRED, 451, "4.3.0", "try later", 1)
    writer.submit_outcome("other@x.test", mark)  # opens the mark group
    writer.submit_outcome("x@x.test", mark)
    writer.submit_outcome("x@x.test", deferred)  # the first attempt's result
    writer.submit_outcome("x@x.test", mark)  # the retry: may not join the first group
    writer.submit_outcome("late@x.test", mark)  # joins the newest mark group
    await writer.flush()
    found = journal.lookup(["x@x.test", "other@x.test", "late@x.test"])
    assert {a: r.status for a, r in found.items()} == {
        "x@x.test": Status.IN_DOUBT, "other@x.test": Status.IN_DOUBT,
        "late@x.test": Status.IN_DOUBT,
    }
    assert found["x@x.test"].code == 451  # the deferral's reply is kept, the mark is newest
    journal.close()


async def test_a_durable_submit_merged_into_an_older_group_waits_for_its_commit(
    tmp_path: Path,
) -> None:
    """With a commit cut at max_batch, a durable submit that joined an older
    group returns once that group is committed -- not when as many addresses
    as were submitted before it have been."""
    journal = CountingJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal, max_batch=2)
    mark, sent = Outcome(Status.IN_DOUBT), Outcome(Status.DELIVERED, 250)
    writer.submit_outcome("a@x.test", mark)
    writer.submit_outcome("b@x.test", sent)
    writer.submit_outcome("c@x.test", sent)
    await writer.submit_durable_outcome(["d@x.test"], mark)  # joins a@'s group
    assert journal.lookup(["d@x.test"])["d@x.test"].status is Status.IN_DOUBT
    await writer.flush()
    assert journal.counts() == {Status.IN_DOUBT: 2, Status.DELIVERED: 2}
    journal.close()


async def test_a_lone_submit_is_committed_after_max_delay_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    committed = trio.Event()

    class Signalling(SQLiteJournal):
        def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
            super().record_outcomes(groups)
            committed.set()  # commits run in the event loop

    journal = Signalling(path)
    writer = JournalWriter(journal, max_delay=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        writer.submit(delivered("a@x.test"))
        with trio.fail_after(10):  # a guard only: this commit takes milliseconds
            await committed.wait()
        assert trio.current_time() - start >= 0.02  # it waited for a group to gather
        assert statuses_seen_by_another_connection(path) == {"a@x.test": "delivered"}
        await writer.aclose()
    journal.close()


async def test_submit_durable_returns_after_the_commit_is_visible(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = SQLiteJournal(path)
    writer = JournalWriter(journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(delivered("earlier@x.test"))
        await writer.submit_durable([StateChange("a@x.test", Status.IN_DOUBT),
                                     StateChange("b@x.test", Status.IN_DOUBT)])
        assert statuses_seen_by_another_connection(path) == {
            "earlier@x.test": "delivered", "a@x.test": "in_doubt", "b@x.test": "in_doubt"}
        assert writer.pending == 0
        await writer.aclose()
    journal.close()


async def test_submit_durable_does_not_wait_for_a_group_to_gather(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal, max_delay=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(delivered("a@x.test"))
        await trio.sleep(1)  # run() is now gathering, until t=30
        await writer.submit_durable([StateChange("b@x.test", Status.IN_DOUBT)])
        assert trio.current_time() < 30
        assert set(journal.lookup(["a@x.test", "b@x.test"])) == {"a@x.test", "b@x.test"}
        await writer.aclose()
    journal.close()


async def test_flush_waits_for_everything_submitted(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = CountingJournal(path)
    writer = JournalWriter(journal, max_batch=100, max_delay=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(1050):
            writer.submit(delivered(f"u{i}@x.test"))
        assert writer.pending == 1050
        await writer.flush()
        assert writer.pending == 0 and sum(journal.batches) == 1050
        assert len(statuses_seen_by_another_connection(path)) == 1050
        await writer.flush()  # nothing left: returns at once
        await writer.aclose()
    journal.close()


async def test_submit_async_waits_while_too_much_is_uncommitted(tmp_path: Path) -> None:
    gate = threading.Event()

    class Slow(CountingJournal):
        def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
            gate.wait(10)
            super().record_outcomes(groups)

    journal = Slow(tmp_path / "j.sqlite")
    writer = JournalWriter(journal, max_pending=10)
    done = trio.Event()

    async def over_the_limit() -> None:
        await writer.submit_async(delivered("eleventh@x.test"))
        done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for i in range(10):
                await writer.submit_async(delivered(f"u{i}@x.test"))
            nursery.start_soon(over_the_limit)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set() and writer.pending == 10
            gate.set()  # the disk catches up
            await done.wait()
            await writer.aclose()
    assert sum(journal.batches) == 11 and journal.counts() == {Status.DELIVERED: 11}
    journal.close()


async def test_a_failing_commit_propagates_out_of_run() -> None:
    class Broken:
        commits_inline = True

        def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
            raise OSError("disk full")

    writer = JournalWriter(Broken())  # type: ignore[arg-type]
    waiter_error: list[BaseException] = []

    async def durable() -> None:
        try:
            await writer.submit_durable([StateChange("a@x.test", Status.IN_DOUBT)])
        except JournalError as exc:
            waiter_error.append(exc)

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(durable)
            await nursery.start(writer.run)
    assert info.group_contains(OSError, match="disk full")
    assert len(waiter_error) == 1 and isinstance(waiter_error[0].__cause__, OSError)
    with pytest.raises(JournalError, match="disk full"):
        writer.submit(delivered("b@x.test"))  # the writer stays failed, loudly


async def test_a_journal_closed_underneath_fails_run(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            journal.close()
            writer.submit(delivered("a@x.test"))
            await writer.flush()
    assert info.group_contains(JournalError, match="closed")


async def test_a_shielded_aclose_after_cancellation_still_commits(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = SQLiteJournal(path)
    writer = JournalWriter(journal, max_delay=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(700):
            writer.submit(delivered(f"u{i}@x.test"))
        nursery.cancel_scope.cancel()  # Ctrl-C: run() stops too
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(10):
                await writer.aclose()
    assert len(statuses_seen_by_another_connection(path)) == 700
    assert writer.pending == 0
    journal.close()


async def test_lookups_run_alongside_group_commits(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([StateChange(f"old{i}@x.test", Status.DEFERRED) for i in range(3000)])
    writer = JournalWriter(journal, max_batch=50)
    seen: list[int] = []

    async def resume_lookups() -> None:
        for _ in range(20):
            found = await trio.to_thread.run_sync(
                journal.lookup, [f"old{i}@x.test" for i in range(3000)])
            seen.append(len(found))

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(resume_lookups)
        for i in range(3000):
            writer.submit(delivered(f"new{i}@x.test"))
            if i % 100 == 0:
                await trio.sleep(0)
        await writer.flush()
        await writer.aclose()
    assert seen == [3000] * 20
    assert journal.counts() == {Status.DEFERRED: 3000, Status.DELIVERED: 3000}
    journal.close()


# -- opening by URL, the job lock, threaded commits --------------------------------


def test_open_journal_takes_a_path_or_a_sqlite_url(tmp_path: Path) -> None:
    from bulkmail.journal import open_journal

    path = tmp_path / "j.sqlite"
    with SQLiteJournal(path) as journal:
        journal.record([delivered("a@x.test")])
    for location in (str(path), f"sqlite:{path}", f"sqlite://{path}"):
        journal = open_journal(location)
        try:
            assert journal.commits_inline is True  # SQLite commits in the event loop
            assert journal.lookup(["a@x.test"])["a@x.test"].status is Status.DELIVERED
        finally:
            journal.close()


def test_the_file_backend_points_a_postgresql_url_to_where_it_is_opened() -> None:
    from bulkmail.journal import open_journal

    with pytest.raises(JournalError, match="open_any_journal"):
        open_journal("postgresql://mail@db.example/bulk")


def test_report_opens_journals_by_url(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with SQLiteJournal(path) as journal:
        journal.record([delivered("a@x.test", possible_duplicate=True)])
    report = subprocess.run(
        [sys.executable, "-m", "bulkmail", "report", f"sqlite:{path}"],
        capture_output=True, check=False,
    )
    assert report.returncode == 0, report.stderr
    assert b"possible duplicates" in report.stdout
    proc = subprocess.run([sys.executable, "-m", "bulkmail", "report", "postgresql://db/bulk"],
                          capture_output=True, check=False)
    assert proc.returncode == 2, proc.stderr  # which job? (asked before connecting)
    assert b"?job=ID" in proc.stderr and b"Traceback" not in proc.stderr


def test_the_job_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    from bulkmail.journal import JobLocked

    path = tmp_path / "j.sqlite"
    first = SQLiteJournal(path, lock=True)
    try:
        with pytest.raises(JobLocked, match=f"pid {os.getpid()}"):
            SQLiteJournal(path, lock=True)
        with SQLiteJournal(path) as reader:  # readers (bulkmail report) need no lock
            assert reader.is_empty()
    finally:
        first.close()
    SQLiteJournal(path, lock=True).close()  # released with close()


def test_the_job_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from bulkmail.journal import SQLiteJournal
            SQLiteJournal({str(path)!r}, lock=True)
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        from bulkmail.journal import JobLocked

        with pytest.raises(JobLocked, match=f"pid {holder.pid}"):
            SQLiteJournal(path, lock=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "j.sqlite.lock").exists()  # the stale file stays; its lock died
    SQLiteJournal(path, lock=True).close()


async def test_a_backend_that_does_not_commit_inline_commits_in_a_worker_thread(
    tmp_path: Path,
) -> None:
    class Remote(CountingJournal):
        commits_inline = False

        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.threads: set[int] = set()

        def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
            self.threads.add(threading.get_ident())
            super().record_outcomes(groups)

    journal = Remote(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit_durable([StateChange("a@x.test", Status.IN_DOUBT)])
        for i in range(20):
            writer.submit(delivered(f"u{i}@x.test"))
        await writer.aclose()
    assert journal.threads and threading.get_ident() not in journal.threads
    assert journal.counts() == {Status.IN_DOUBT: 1, Status.DELIVERED: 20}
    journal.close()


async def test_results_are_committed_within_max_delay_under_a_steady_trickle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The bound behind the README's duplicate window: a result submitted while
    others keep arriving is still durable within ``max_delay`` (virtual time)."""
    submitted: dict[str, float] = {}
    lags: list[float] = []

    class Timing(SQLiteJournal):
        def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
            super().record_outcomes(groups)
            now = trio.current_time()
            lags.extend(now - submitted[a] for addresses, _ in groups for a in addresses)

    journal = Timing(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(200):
            address = f"u{i}@x.test"
            submitted[address] = trio.current_time()
            writer.submit(delivered(address))
            await trio.sleep(0.001)
        await writer.aclose()
    journal.close()
    assert len(lags) == 200
    assert max(lags) <= writer.max_delay + 1e-9


async def test_a_newsletters_groups_gather_into_one_commit_below_max_batch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    """A commit costs by rows, and a transaction's recipients share one: 80
    transactions of 50 (marks and deliveries) wait out ``max_delay`` together
    instead of a commit per 500 addresses (issue 14: 1,699 -> 1,494 commits
    for 400,000 recipients)."""
    journal = CountingJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    assert writer.max_batch == MAX_BATCH >= 4_000
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for t in range(40):
            addresses = [f"r{t}-{i}@x.test" for i in range(50)]
            writer.submit_outcomes(addresses, Outcome(Status.IN_DOUBT))
            writer.submit_outcomes(list(addresses), Outcome(Status.DELIVERED, 250))
        await trio.sleep(writer.max_delay * 2)
        assert journal.batches == [4_000] and writer.pending == 0
        await writer.aclose()
    assert journal.counts() == {Status.DELIVERED: 2_000}
    journal.close()


def test_a_threaded_journal_keeps_the_smaller_commit_trigger(tmp_path: Path) -> None:
    """A journal on a database server upserts every address, and in-doubt
    marks would wait behind a bigger commit: it keeps 500."""

    class Threaded(SQLiteJournal):
        commits_inline = False

    with Threaded(tmp_path / "j.sqlite") as journal:
        assert JournalWriter(journal).max_batch == MAX_BATCH_THREADED == 500
