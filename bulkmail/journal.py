"""Durable recipient states behind a small interface (SQLite now, PostgreSQL later).

Writes arrive in group commits: one SQLite transaction (WAL) for a few hundred
state changes, flushed every few milliseconds, so durability costs a small
fraction of throughput.  ``synchronous=NORMAL`` (default) survives a killed
process; ``FULL`` also survives power loss, at some cost.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from .results import Status

__all__ = [
    "Journal",
    "JournalError",
    "JournalWriter",
    "RecipientRecord",
    "SQLiteJournal",
    "StateChange",
    "Status",
]

LOOKUP_BATCH = 500


class JournalError(Exception):
    """The journal cannot be used (corrupt file, unwritable path)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    address: str
    status: Status
    code: int | None = None
    enhanced: str | None = None
    reply: str | None = None
    attempts: int = 0
    host: str | None = None
    next_attempt: float | None = None
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    address: str
    status: Status
    code: int | None
    enhanced: str | None
    reply: str | None
    attempts: int
    host: str | None
    next_attempt: float | None
    possible_duplicate: bool
    updated_at: float


class Journal(Protocol):
    """What the engine needs from durable storage."""

    def lookup(self, addresses: Sequence[str]) -> dict[str, RecipientRecord]: ...
    def record(self, changes: Sequence[StateChange]) -> None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def iter_records(self) -> Iterator[RecipientRecord]: ...
    def counts(self) -> dict[Status, int]: ...
    def is_empty(self) -> bool: ...
    def top_domains(self, n: int = 10) -> list[tuple[str, int]]: ...
    def top_codes(self, n: int = 10) -> list[tuple[str, int]]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS recipients (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    code INTEGER,
    enhanced TEXT,
    reply TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    next_attempt REAL,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_status ON recipients(status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# An in-doubt mark never erases what a recipient already was flagged as, and a
# final state keeps the duplicate flag once it has been raised.
_UPSERT = """
INSERT INTO recipients (address, domain, status, code, enhanced, reply, attempts, host,
                        next_attempt, possible_duplicate, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(address) DO UPDATE SET
    status = excluded.status,
    code = COALESCE(excluded.code, recipients.code),
    enhanced = CASE WHEN excluded.code IS NULL THEN recipients.enhanced ELSE excluded.enhanced END,
    reply = CASE WHEN excluded.code IS NULL THEN recipients.reply ELSE excluded.reply END,
    attempts = MAX(excluded.attempts, recipients.attempts),
    host = COALESCE(excluded.host, recipients.host),
    next_attempt = excluded.next_attempt,
    possible_duplicate = MAX(excluded.possible_duplicate, recipients.possible_duplicate),
    updated_at = excluded.updated_at
"""

_COLUMNS = (
    "address, status, code, enhanced, reply, attempts, host, next_attempt,"
    " possible_duplicate, updated_at"
)


def _record(row: tuple[object, ...]) -> RecipientRecord:
    (address, status, code, enhanced, reply, attempts, host, next_attempt, dup, updated) = row
    return RecipientRecord(
        str(address),
        Status(str(status)),
        int(code) if isinstance(code, int) else None,
        str(enhanced) if enhanced is not None else None,
        str(reply) if reply is not None else None,
        int(attempts) if isinstance(attempts, int) else 0,
        str(host) if host is not None else None,
        float(next_attempt) if isinstance(next_attempt, (int, float)) else None,
        bool(dup),
        float(updated) if isinstance(updated, (int, float)) else 0.0,
    )


class SQLiteJournal:
    """The default journal: one SQLite file in WAL mode."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = os.fspath(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT 1 FROM recipients LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {self.path} is unusable: {exc}") from exc

    def lookup(self, addresses: Sequence[str]) -> dict[str, RecipientRecord]:
        found: dict[str, RecipientRecord] = {}
        for start in range(0, len(addresses), LOOKUP_BATCH):
            chunk = addresses[start : start + LOOKUP_BATCH]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM recipients WHERE address IN ({marks})", list(chunk)
            )
            for row in rows:
                record = _record(row)
                found[record.address] = record
        return found

    def record(self, changes: Sequence[StateChange]) -> None:
        if not changes:
            return
        now = time.time()
        rows = [
            (
                c.address,
                c.address.rpartition("@")[2].lower(),
                c.status.value,
                c.code,
                c.enhanced,
                c.reply,
                c.attempts,
                c.host,
                c.next_attempt,
                int(c.possible_duplicate),
                now,
            )
            for c in changes
        ]
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(_UPSERT, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def iter_records(self) -> Iterator[RecipientRecord]:
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM recipients ORDER BY address")
        while True:
            rows = cursor.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield _record(row)

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM recipients LIMIT 1").fetchone() is None

    def counts(self) -> dict[Status, int]:
        rows = self._db.execute("SELECT status, count(*) FROM recipients GROUP BY status")
        return {Status(str(s)): int(n) for s, n in rows}

    def top_domains(self, n: int = 10) -> list[tuple[str, int]]:
        rows = self._db.execute(
            "SELECT domain, count(*) AS c FROM recipients GROUP BY domain ORDER BY c DESC, domain"
            " LIMIT ?",
            (n,),
        )
        return [(str(d), int(c)) for d, c in rows]

    def top_codes(self, n: int = 10) -> list[tuple[str, int]]:
        rows = self._db.execute(
            "SELECT code, enhanced, count(*) AS c FROM recipients WHERE code IS NOT NULL"
            " GROUP BY code, enhanced ORDER BY c DESC LIMIT ?",
            (n,),
        )
        return [(f"{code} {enh}" if enh else str(code), int(c)) for code, enh, c in rows]

    def close(self) -> None:
        self._db.close()


class JournalWriter:
    """Batches state changes from many tasks into group commits.

    ``submit`` never blocks (results are recorded from synchronous callbacks);
    memory stays bounded because the engine itself holds at most
    ``max_pending`` recipients, each producing a handful of changes.
    ``submit_durable`` returns only once its changes are committed -- the
    in-doubt mark that must precede an end of data.
    """

    def __init__(self, journal: Journal, *, max_batch: int = 500, max_delay: float = 0.005) -> None:
        self.journal = journal
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._queue: deque[StateChange] = deque()
        self._committed_seq = 0
        self._submitted_seq = 0
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._durable_waiters = 0
        self.commits = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, change: StateChange) -> None:
        self._check()
        self._queue.append(change)
        self._submitted_seq += 1
        if len(self._queue) >= self.max_batch:
            self._wakeup.set()

    async def submit_durable(self, changes: Sequence[StateChange]) -> None:
        self._check()
        self._queue.extend(changes)
        self._submitted_seq += len(changes)
        self._durable_waiters += 1
        self._wakeup.set()
        try:
            await self._wait_for(self._submitted_seq)
        finally:
            self._durable_waiters -= 1

    async def flush(self) -> None:
        self._wakeup.set()
        await self._wait_for(self._submitted_seq)

    async def _wait_for(self, seq: int) -> None:
        while self._committed_seq < seq:
            self._check()
            progress = self._progress
            await progress.wait()
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise JournalError(f"journal write failed: {self._error}") from self._error

    async def aclose(self) -> None:
        await self.flush()
        self._closing = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            if len(self._queue) < self.max_batch and not self._closing and (
                not self._durable_waiters
            ):
                # let a group gather: a few ms buys hundreds of changes per commit
                with trio.move_on_after(self.max_delay):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
            batch: list[StateChange] = []
            while self._queue and len(batch) < max(self.max_batch, 1):
                batch.append(self._queue.popleft())
            try:
                await trio.to_thread.run_sync(self.journal.record, batch)
            except BaseException as exc:
                self._error = exc
                self._signal()
                raise
            self.commits += 1
            self._committed_seq += len(batch)
            self._signal()

    def _signal(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

