"""The default journal: one SQLite file in WAL mode.

WAL makes a commit one sequential append, and readers (``bulkmail report``
during a run) never block the writer.  ``synchronous=NORMAL`` survives a
killed process; ``FULL`` also fsyncs each commit to survive power loss.  A WAL
torn by a crash is repaired by SQLite itself on open (the torn transaction is
dropped whole); damage beyond that is reported, never "fixed" by deleting data.

Writes are appends: each group commit adds a few rows to ``events``, one per
outcome shared by many addresses (a JSON array), instead of a keyed upsert per
recipient -- a run pays about half a microsecond per recipient instead of
twelve.  This class's readers first *fold* the events into ``recipients``
(per address state, one set-based SQL statement), so lookups and reports see
every committed change; SQL of one's own sees them after such a read.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from .base import (
    JournalError,
    JournalWriteError,
    Outcome,
    RecipientRecord,
    StateChange,
    Status,
    grouped_by_outcome,
)
from .lock import JobLock
from .sqlite_schema import APPEND, FOLD, SCHEMA, SCHEMA_VERSION, UPSERT, domain_of, json_array

__all__ = ["LOOKUP_CHUNK", "SCHEMA_VERSION", "SQLiteJournal"]

#: addresses per ``IN (...)`` query; well under SQLite's bound-variable limit
LOOKUP_CHUNK = 500
#: rows per fetch when streaming records
_FETCH = 1000
_COLUMNS = (
    "address, status, code, enhanced, reply, attempts, host, next_attempt,"
    " possible_duplicate, updated_at"
)


def _record(row: Any) -> RecipientRecord:
    address, status, code, enhanced, reply, attempts, host, next_attempt, dup, updated = row
    return RecipientRecord(
        address, Status(status), code, enhanced, reply, attempts, host, next_attempt,
        bool(dup), updated,
    )


def _roll_back(db: sqlite3.Connection) -> None:
    """Undo the open transaction after a failure; a failing ROLLBACK must not
    hide the error that caused it."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class SQLiteJournal:
    """A :class:`~bulkmail.journal.base.Journal` in one SQLite file.

    The connection is shared by whichever worker threads the caller uses
    (``trio.to_thread``); a lock makes every call exclusive, so the group
    commit and a resume's lookups never interleave inside one transaction.

    ``lock=True`` (a sending run) first takes the job lock on ``PATH.lock``
    (:class:`~bulkmail.journal.lock.JobLock`), released by :meth:`close`, so
    two runs of one job cannot both send.
    """

    #: a WAL commit without fsync is a fraction of a millisecond: the writer
    #: runs it in the event loop (see ``JournalWriter._commit_batch``)
    commits_inline = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        lock: bool = False,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._job_lock = JobLock(self.path) if lock else None
        if self._job_lock is not None:
            self._job_lock.acquire()
        try:
            try:
                self._db = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None
                )
            except sqlite3.Error as exc:
                raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
            try:
                self._prepare(synchronous)
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            if self._job_lock is not None:
                self._job_lock.release()
            raise

    def _prepare(self, synchronous: str) -> None:
        db = self._db
        try:
            db.execute("PRAGMA busy_timeout = 10000")  # a concurrent reader checkpointing
            db.execute("PRAGMA journal_mode = WAL")  # replays an intact WAL, drops a torn tail
            db.execute(f"PRAGMA synchronous = {synchronous}")
            problems = [" ".join(str(p).split()) for (p,) in db.execute("PRAGMA quick_check(3)")]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise JournalError(
                f"journal {self.path} is unreadable ({exc}); it was left as is"
            ) from exc
        if problems != ["ok"]:
            raise JournalError(
                f"journal {self.path} is corrupt ({'; '.join(problems)}); it was left as is"
            )
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema {version}; this bulkmail reads up to"
                f" {SCHEMA_VERSION}"
            )
        if version == SCHEMA_VERSION:
            return  # opening an existing journal writes nothing (``bulkmail report`` mid-run)
        # a new file, or a version-1 journal gaining the events table (its
        # recipients table is already the folded state)
        try:
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except sqlite3.Error as exc:
            raise JournalWriteError(f"cannot initialise journal {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _using(self, *, writing: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, exclusively, with SQLite errors turned into JournalError
        (JournalWriteError for a failed write: the file is fine, the disk is not)."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                error = JournalWriteError if writing else JournalError
                raise error(f"journal {self.path}: {exc}") from exc

    def lookup(self, addresses: Sequence[str]) -> dict[str, RecipientRecord]:
        found: dict[str, RecipientRecord] = {}
        for start in range(0, len(addresses), LOOKUP_CHUNK):
            chunk = list(addresses[start : start + LOOKUP_CHUNK])
            query = (
                f"SELECT {_COLUMNS} FROM recipients"
                f" WHERE address IN ({','.join('?' * len(chunk))})"
            )
            with self._using() as db:  # per chunk: a long lookup doesn't stall commits
                self._fold(db)
                rows = db.execute(query, chunk).fetchall()
            for row in rows:
                found[row[0]] = _record(row)
        return found

    def stored_addresses(self, addresses: Sequence[str]) -> dict[str, str]:
        """Each of ``addresses`` this journal knows, mapped to the form it stores.

        An address matches exactly; else by its domain compared case-insensitively
        with the same local part; else case-insensitively throughout, if only one
        stored address does.  Unknown addresses are left out -- so a caller that
        records only what this returns never adds a row (``bulkmail bounces``).
        """
        found = {a: a for a in self.lookup(addresses)}
        missing = [a for a in addresses if a not in found]
        domains = sorted({domain_of(a) for a in missing})
        candidates: dict[str, list[str]] = {}
        for start in range(0, len(domains), LOOKUP_CHUNK):
            chunk = domains[start : start + LOOKUP_CHUNK]
            query = f"SELECT address FROM recipients WHERE domain IN ({','.join('?' * len(chunk))})"
            with self._using() as db:
                rows = db.execute(query, chunk).fetchall()
            for (stored,) in rows:
                candidates.setdefault(stored.lower(), []).append(stored)
        for address in missing:
            matches = candidates.get(address.lower(), [])
            local = address.rpartition("@")[0]
            same_local = [m for m in matches if m.rpartition("@")[0] == local]
            pick = same_local or matches
            if len(pick) == 1:
                found[address] = pick[0]
        return found

    def record(self, changes: Sequence[StateChange]) -> None:
        self.record_outcomes(grouped_by_outcome(changes))

    def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
        now = time.time()
        rows: list[tuple[object, ...]] = []
        direct: list[tuple[object, ...]] = []
        for addresses, o in groups:
            if not addresses:
                continue
            array = json_array(addresses)
            if array is not None:
                rows.append((
                    array, o.status.value, o.code, o.enhanced, o.reply, o.attempts, o.host,
                    o.next_attempt, int(o.possible_duplicate), now,
                ))
                continue
            direct.extend(
                (
                    a, domain_of(a), o.status.value, o.code, o.enhanced, o.reply, o.attempts,
                    o.host, o.next_attempt, int(o.possible_duplicate), now,
                )
                for a in addresses
            )
        if not rows and not direct:
            return
        # ``_using`` and ``_transaction`` written out: this is every group
        # commit, and an in-doubt mark's commit is one per few messages (two
        # generator-based context managers were 3 of its ~24 us of CPU)
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if rows:
                        db.executemany(APPEND, rows)
                    if direct:
                        db.executemany(UPSERT, direct)
                    db.execute("COMMIT")
                except BaseException:
                    _roll_back(db)
                    raise
            except sqlite3.Error as exc:
                raise JournalWriteError(f"journal {self.path}: {exc}") from exc

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise

    def _fold(self, db: sqlite3.Connection) -> None:
        """Apply the appended events to ``recipients`` and drop them, atomically."""
        (top,) = db.execute("SELECT max(rowid) FROM events").fetchone()
        if top is None:
            return
        with self._transaction(db):
            db.execute(FOLD, (top,))
            db.execute("DELETE FROM events WHERE rowid <= ?", (top,))

    def set_meta(self, key: str, value: str) -> None:
        with self._using(writing=True) as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        with self._using() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def iter_records(self) -> Iterator[RecipientRecord]:
        """Every record in address order, fetched a thousand rows at a time.

        Meant for reports; a commit between two fetches may or may not show.
        """
        with self._using() as db:
            self._fold(db)
            cursor = db.execute(f"SELECT {_COLUMNS} FROM recipients ORDER BY address")
        try:
            while True:
                with self._using():
                    rows = cursor.fetchmany(_FETCH)
                if not rows:
                    return
                for row in rows:
                    yield _record(row)
        finally:
            with self._using():
                cursor.close()

    def is_empty(self) -> bool:
        with self._using() as db:
            return not any(
                db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                for table in ("events", "recipients")
            )

    def counts(self) -> dict[Status, int]:
        with self._using() as db:
            self._fold(db)
            rows = db.execute("SELECT status, count(*) FROM recipients GROUP BY status").fetchall()
        return {Status(status): n for status, n in rows}

    def flagged(self) -> dict[Status, int]:
        with self._using() as db:
            self._fold(db)
            rows = db.execute(
                "SELECT status, count(*) FROM recipients WHERE possible_duplicate"
                " GROUP BY status"
            ).fetchall()
        return {Status(status): n for status, n in rows}

    def top_domains(self, n: int = 10) -> list[tuple[str, int]]:
        with self._using() as db:
            self._fold(db)
            rows = db.execute(
                "SELECT domain, count(*) AS c FROM recipients GROUP BY domain"
                " ORDER BY c DESC, domain LIMIT ?",
                (n,),
            ).fetchall()
        return [(domain, c) for domain, c in rows]

    def top_codes(self, n: int = 10) -> list[tuple[str, int]]:
        with self._using() as db:
            self._fold(db)
            rows = db.execute(
                "SELECT code, enhanced, count(*) AS c FROM recipients WHERE code IS NOT NULL"
                " GROUP BY code, enhanced ORDER BY c DESC, code, enhanced LIMIT ?",
                (n,),
            ).fetchall()
        return [(f"{code} {enhanced}" if enhanced else str(code), c) for code, enhanced, c in rows]

    def failure_replies(self) -> list[tuple[Status, int, str | None, str | None, int]]:
        """(status, code, enhanced, reply, recipients) of the bounced and deferred
        recipients, one row per distinct reply: what ``bulkmail report`` classifies."""
        with self._using() as db:
            self._fold(db)
            rows = db.execute(
                "SELECT status, code, enhanced, reply, count(*) FROM recipients"
                " WHERE status IN (?, ?) AND code IS NOT NULL"
                " GROUP BY status, code, enhanced, reply",
                (Status.BOUNCED.value, Status.DEFERRED.value),
            ).fetchall()
        return [(Status(status), code, enhanced, reply, n)
                for status, code, enhanced, reply, n in rows]

    def tally(self, since: float) -> list[tuple[Status, int, int, float, float, int, float | None]]:
        """Per status: (status, recipients, flagged, earliest and latest
        ``updated_at``, how many changed at or after ``since``, earliest
        ``next_attempt``) -- ``bulkmail status``'s header, one scan in SQL."""
        with self._using() as db:
            self._fold(db)
            rows = db.execute(
                "SELECT status, count(*), sum(possible_duplicate), min(updated_at),"
                " max(updated_at), sum(updated_at >= ?), min(next_attempt)"
                " FROM recipients GROUP BY status",
                (since,),
            ).fetchall()
        return [(Status(status), n, flagged, first, last, recent, due)
                for status, n, flagged, first, last, recent, due in rows]

    def waiting(
        self, statuses: Sequence[Status], now: float
    ) -> list[tuple[str, Status, int, int, float | None, int | None, str | None, str | None]]:
        """The recipients in ``statuses`` grouped by (domain, status, whole minutes
        since their state changed at ``now``): (domain, status, minutes,
        recipients, and of the group's latest 4xx record: its ``updated_at``,
        code, enhanced code and reply -- all None without one).  What
        ``bulkmail status``'s table needs, without reading every record."""
        marks = ",".join("?" * len(statuses))
        with self._using() as db:
            self._fold(db)
            # a bare column with a single max() takes that row's value (SQLite)
            rows = db.execute(
                "SELECT domain, status, CAST((? - updated_at) / 60 AS INTEGER) AS age,"
                " count(*), max(CASE WHEN code BETWEEN 400 AND 499 THEN updated_at END),"
                " code, enhanced, reply"
                f" FROM recipients WHERE status IN ({marks}) GROUP BY domain, status, age",
                (now, *(s.value for s in statuses)),
            ).fetchall()
        return [
            (domain, Status(status), max(0, age), n, at,
             *((code, enhanced, reply) if at is not None else (None, None, None)))
            for domain, status, age, n, at, code, enhanced, reply in rows
        ]

    def close(self) -> None:
        """Close the connection (idempotent); SQLite checkpoints and removes the WAL."""
        with self._lock:
            self._db.close()
        if self._job_lock is not None:
            self._job_lock.release()

    def __enter__(self) -> SQLiteJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLiteJournal {self.path!r}>"
