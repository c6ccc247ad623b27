"""Warm-up counters: how many recipients each egress address sent, per window.

A new sending IP must grow its volume slowly, provider by provider; the
counts that enforce that must survive a restart (else every restart would
grant a fresh day's cap).  One small SQLite file (beside the journal) holds
them for ``send``; store workers keep the same counts in PostgreSQL
(``bulkmail.store.shaping``), shared by all of them::

    warmup_start (source, pattern, first_day)        day 1 of each schedule
    warmup_sent  (source, pattern, window, sent)     recipients per window

``reserve`` is the one operation that must be atomic: it grants at most
what is left of the cap in one transaction, so two workers sharing the
file (or, later, a PostgreSQL table with the same two statements) can
never overshoot together.  Rows of windows older than a week are dropped.
(PostgreSQL does it in one statement: ``store/shaping.py``.)
"""

from __future__ import annotations

import sqlite3
from datetime import date

#: windows older than this (seconds) are forgotten on open
KEEP_SECONDS = 7 * 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS warmup_start (
    source TEXT NOT NULL, pattern TEXT NOT NULL, first_day TEXT NOT NULL,
    PRIMARY KEY (source, pattern));
CREATE TABLE IF NOT EXISTS warmup_sent (
    source TEXT NOT NULL, pattern TEXT NOT NULL, window INTEGER NOT NULL,
    sent INTEGER NOT NULL, PRIMARY KEY (source, pattern, window));
"""


class WarmupCounters:
    """Counters in SQLite (``":memory:"`` for a run that keeps none)."""

    #: every call is atomic by itself: nothing to reserve ahead
    shared = False

    def __init__(self, path: str = ":memory:", *, now: float | None = None) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # a commit per transaction taken: no fsync each (a crash of the process
        # loses nothing; a power cut may lose the last counts, like the journal's
        # "normal" sync)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if now is not None:
            self._db.execute("DELETE FROM warmup_sent WHERE window < ?", (int(now) - KEEP_SECONDS,))

    def close(self) -> None:
        self._db.close()

    def first_day(self, source: str, pattern: str, today: date) -> date:
        """Day 1 of ``source``'s schedule for ``pattern``: the first day it was
        asked about, recorded then and kept."""
        self._db.execute(
            "INSERT OR IGNORE INTO warmup_start VALUES (?, ?, ?)",
            (source, pattern, today.isoformat()),
        )
        row = self._db.execute(
            "SELECT first_day FROM warmup_start WHERE source = ? AND pattern = ?",
            (source, pattern),
        ).fetchone()
        return date.fromisoformat(row[0])

    async def load_first_day(self, source: str, pattern: str, today: date) -> None:
        """(For shared counters only: a file answers :meth:`first_day` at once.)"""

    async def reserve_ahead(
        self, source: str, pattern: str, window: int, wanted: int, cap: int
    ) -> None:
        """(For shared counters only: :meth:`reserve` is atomic here.)"""

    def sent(self, source: str, pattern: str, window: int) -> int:
        row = self._db.execute(
            "SELECT sent FROM warmup_sent WHERE source = ? AND pattern = ? AND window = ?",
            (source, pattern, window),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def reserve(self, source: str, pattern: str, window: int, wanted: int, cap: int) -> int:
        """Count up to ``wanted`` more in ``window`` without passing ``cap``;
        returns how many were granted (0 when the cap is reached)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time: no two grants of the same rest
        try:
            granted = max(0, min(wanted, cap - self.sent(source, pattern, window)))
            if granted:
                db.execute(
                    "INSERT INTO warmup_sent VALUES (?, ?, ?, ?) ON CONFLICT"
                    " (source, pattern, window) DO UPDATE SET sent = sent + excluded.sent",
                    (source, pattern, window, granted),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return granted

    def release(self, source: str, pattern: str, window: int, count: int) -> None:
        """Give back ``count`` granted but never sent (the transaction did not start)."""
        self._db.execute(
            "UPDATE warmup_sent SET sent = max(0, sent - ?)"
            " WHERE source = ? AND pattern = ? AND window = ?",
            (count, source, pattern, window),
        )
