"""The journal: durable recipient states, group commits, recovery after a kill
or a torn write."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from bulkmail.journal import JournalError, JournalWriter, SQLiteJournal, StateChange
from bulkmail.results import Status


def delivered(address: str, **kwargs: object) -> StateChange:
    return StateChange(address, Status.DELIVERED, 250, "2.0.0", "ok", 1, "mx.test", **kwargs)  # type: ignore[arg-type]


def test_record_and_lookup_round_trip(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([
        StateChange("a@x.test", Status.IN_DOUBT),
        delivered("b@x.test"),
        StateChange("a@x.test", Status.DEFERRED, 451, "4.7.1", "later", 1),  # last wins
    ])
    found = journal.lookup(["a@x.test", "b@x.test", "c@x.test"])
    assert set(found) == {"a@x.test", "b@x.test"}
    assert found["a@x.test"].status is Status.DEFERRED and found["a@x.test"].code == 451
    assert found["b@x.test"].host == "mx.test"
    journal.close()


def test_in_doubt_flag_survives_the_final_state(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([StateChange("a@x.test", Status.IN_DOUBT, possible_duplicate=True)])
    journal.record([delivered("a@x.test")])
    record = journal.lookup(["a@x.test"])["a@x.test"]
    assert record.status is Status.DELIVERED and record.possible_duplicate
    journal.close()


def test_counts_top_domains_codes_and_meta(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([delivered(f"u{i}@big.test") for i in range(5)]
                   + [StateChange("x@small.test", Status.BOUNCED, 550, "5.1.1", "no such user")])
    journal.set_meta("sender", "news@x.test")
    assert journal.counts() == {Status.DELIVERED: 5, Status.BOUNCED: 1}
    assert journal.top_domains(1) == [("big.test", 5)]
    assert journal.top_codes() == [("250 2.0.0", 5), ("550 5.1.1", 1)]
    assert journal.get_meta("sender") == "news@x.test" and journal.get_meta("nope") is None
    journal.close()
    reopened = SQLiteJournal(tmp_path / "j.sqlite")
    assert reopened.counts()[Status.DELIVERED] == 5  # durable across close/reopen
    reopened.close()


def test_iter_records_streams_many(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([delivered(f"u{i:06d}@x.test") for i in range(100_000)])
    stream = journal.iter_records()
    first = next(stream)
    assert first.address == "u000000@x.test"
    assert 1 + sum(1 for _ in stream) == 100_000
    assert len(journal.lookup([f"u{i:06d}@x.test" for i in range(0, 100_000, 7)])) == 14286
    journal.close()


def test_sigkill_keeps_every_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from bulkmail.journal import SQLiteJournal, StateChange
        from bulkmail.results import Status
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
    journal = SQLiteJournal(path)
    found = journal.lookup([f"u{b}-{i}@x.test" for b in range(committed + 1) for i in range(100)])
    assert len(found) == (committed + 1) * 100
    journal.close()


def test_a_torn_wal_write_recovers_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)  # a writer that never checkpoints, killed mid-write
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.close()
    journal = SQLiteJournal(path)
    journal._db.execute("PRAGMA wal_autocheckpoint=0")
    journal.record([delivered(f"a{i}@x.test") for i in range(50)])
    wal = Path(f"{path}-wal")
    intact = wal.stat().st_size
    journal.record([delivered(f"b{i}@x.test") for i in range(50)])
    # copy the files as a crash would leave them: the second commit torn mid-frame
    crash = tmp_path / "crash.sqlite"
    crash.write_bytes(path.read_bytes())
    torn = wal.read_bytes()[: intact + (wal.stat().st_size - intact) // 2]
    Path(f"{crash}-wal").write_bytes(torn)
    journal.close()
    recovered = SQLiteJournal(crash)
    addresses = [f"{p}{i}@x.test" for p in "ab" for i in range(50)]
    found = recovered.lookup(addresses)
    assert {a for a in found if a.startswith("a")} == {f"a{i}@x.test" for i in range(50)}
    assert not any(a.startswith("b") for a in found)  # the torn transaction is gone, whole
    recovered.close()


def test_a_corrupt_journal_is_a_clear_error_and_is_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=str(path)):
        SQLiteJournal(path)
    assert path.exists()


class CountingJournal(SQLiteJournal):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def record(self, changes: Sequence[StateChange]) -> None:
        self.batches.append(len(changes))
        super().record(changes)


async def test_writer_groups_many_submits_into_few_commits(tmp_path: Path) -> None:
    journal = CountingJournal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal, max_batch=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(2000):
            writer.submit(delivered(f"u{i}@x.test"))
        await writer.flush()
        await writer.aclose()
    assert sum(journal.batches) == 2000
    assert len(journal.batches) <= 6
    journal.close()


async def test_submit_durable_returns_after_the_commit_is_visible(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = SQLiteJournal(path)
    writer = JournalWriter(journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit_durable([StateChange("a@x.test", Status.IN_DOUBT)])
        other = sqlite3.connect(path)  # a second connection, as after a crash
        assert other.execute("SELECT status FROM recipients").fetchall() == [("in_doubt",)]
        other.close()
        await writer.aclose()
    journal.close()


async def test_a_failing_commit_propagates() -> None:
    class Broken:
        def record(self, changes: Sequence[StateChange]) -> None:
            raise OSError("disk full")

    writer = JournalWriter(Broken())  # type: ignore[arg-type]
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.submit_durable([StateChange("a@x.test", Status.IN_DOUBT)])
    assert info.group_contains(OSError) or info.group_contains(JournalError)
