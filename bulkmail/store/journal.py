"""One job of the store, seen through the :class:`~bulkmail.journal.base.Journal`
protocol, so ``bulkmail report``, ``bounces`` and the resume logic work
unchanged on PostgreSQL.

``record`` writes whoever leases the recipients (a single-process send, or
bounces applied after the run); workers sharing a job write through the
fenced calls of :mod:`bulkmail.store.leases` instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..journal.base import (
    Journal,
    Outcome,
    RecipientRecord,
    StateChange,
    Status,
    grouped_by_outcome,
)
from .connection import Database
from .errors import StoreError
from .outcomes import apply_upsert

__all__ = ["PgJournal"]

_FETCH = 1000

_COLUMNS = (
    "address, state, code, enhanced, reply, attempts, host,"
    " CASE WHEN isfinite(next_attempt) THEN extract(epoch FROM next_attempt)::float8 END,"
    " possible_duplicate,"
    " extract(epoch FROM updated_at)::float8"
)


def _record(row: Sequence[Any]) -> RecipientRecord:
    address, state, code, enhanced, reply, attempts, host, next_attempt, dup, updated = row
    return RecipientRecord(
        address, Status(state), code, enhanced, reply, attempts, host, next_attempt,
        bool(dup), updated,
    )


class PgJournal:
    """A :class:`~bulkmail.journal.base.Journal` over one job's recipients."""

    #: a commit waits on the server: the writer runs it in a worker thread
    commits_inline = False

    def __init__(self, db: Database, job: int, *, owns_db: bool = False) -> None:
        self.db = db
        self.job = job
        self._owns_db = owns_db
        with db.using() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = %s", (job,)).fetchone() is None:
                raise StoreError(f"no job {job}")

    def lookup(self, addresses: Sequence[str]) -> dict[str, RecipientRecord]:
        with self.db.using() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM recipients WHERE job = %s AND address = ANY(%s)",
                (self.job, list(addresses)),
            ).fetchall()
        return {str(row[0]): _record(row) for row in rows}

    def stored_addresses(self, addresses: Sequence[str]) -> dict[str, str]:
        """Each of ``addresses`` the job knows, mapped to the form it stores
        (the SQLite journal's rules: exact; else the same local part with the
        domain in another case; else case-insensitively, if only one matches).
        Unknown ones are left out, so ``bulkmail bounces`` never adds a row."""
        found = {a: a for a in self.lookup(addresses)}
        missing = [a for a in addresses if a not in found]
        if not missing:
            return found
        with self.db.using() as conn:
            rows = conn.execute(
                "SELECT address FROM recipients WHERE job = %s AND lower(address) = ANY(%s)",
                (self.job, [a.lower() for a in missing]),
            ).fetchall()
        candidates: dict[str, list[str]] = {}
        for (stored,) in rows:
            candidates.setdefault(str(stored).lower(), []).append(str(stored))
        for address in missing:
            matches = candidates.get(address.lower(), [])
            local = address.rpartition("@")[0]
            pick = [m for m in matches if m.rpartition("@")[0] == local] or matches
            if len(pick) == 1:
                found[address] = pick[0]
        return found

    def record(self, changes: Sequence[StateChange]) -> None:
        self.record_outcomes(grouped_by_outcome(changes))

    def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
        if not any(addresses for addresses, _ in groups):
            return
        with self.db.using() as conn, conn.transaction():
            apply_upsert(conn, self.job, groups)

    def set_meta(self, key: str, value: str) -> None:
        with self.db.using() as conn:
            conn.execute(
                "INSERT INTO job_meta (job, key, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (job, key) DO UPDATE SET value = excluded.value",
                (self.job, key, value),
            )

    def get_meta(self, key: str) -> str | None:
        with self.db.using() as conn:
            row = conn.execute(
                "SELECT value FROM job_meta WHERE job = %s AND key = %s", (self.job, key)
            ).fetchone()
        return None if row is None else str(row[0])

    def iter_records(self) -> Iterator[RecipientRecord]:
        """Every record in address order, a thousand at a time (keyset pages, so
        no transaction stays open while the caller works)."""
        after: str | None = None
        while True:
            with self.db.using() as conn:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM recipients WHERE job = %s"
                    " AND (%s::text IS NULL OR address > %s) ORDER BY address LIMIT %s",
                    (self.job, after, after, _FETCH),
                ).fetchall()
            for row in rows:
                yield _record(row)
            if len(rows) < _FETCH:
                return
            after = str(rows[-1][0])

    def is_empty(self) -> bool:
        with self.db.using() as conn:
            row = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM recipients WHERE job = %s)", (self.job,)
            ).fetchone()
        return bool(row and row[0])

    def counts(self) -> dict[Status, int]:
        with self.db.using() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM recipients WHERE job = %s GROUP BY state",
                (self.job,),
            ).fetchall()
        return {Status(state): int(n) for state, n in rows}

    def flagged(self) -> dict[Status, int]:
        with self.db.using() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM recipients WHERE job = %s AND possible_duplicate"
                " GROUP BY state",
                (self.job,),
            ).fetchall()
        return {Status(state): int(n) for state, n in rows}

    def top_domains(self, n: int = 10) -> list[tuple[str, int]]:
        with self.db.using() as conn:
            rows = conn.execute(
                "SELECT domain, count(*) AS c FROM recipients WHERE job = %s"
                " GROUP BY domain ORDER BY c DESC, domain LIMIT %s",
                (self.job, n),
            ).fetchall()
        return [(str(domain), int(c)) for domain, c in rows]

    def top_codes(self, n: int = 10) -> list[tuple[str, int]]:
        with self.db.using() as conn:
            rows = conn.execute(
                "SELECT code, enhanced, count(*) AS c FROM recipients"
                " WHERE job = %s AND code IS NOT NULL"
                " GROUP BY code, enhanced ORDER BY c DESC, code, enhanced LIMIT %s",
                (self.job, n),
            ).fetchall()
        return [(f"{code} {enhanced}" if enhanced else str(code), int(c))
                for code, enhanced, c in rows]

    def close(self) -> None:
        """Close the connection if this journal opened it (idempotent)."""
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> PgJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PgJournal job {self.job} {self.db!r}>"


if TYPE_CHECKING:
    _conforms: type[Journal] = PgJournal  # mypy checks the protocol here
