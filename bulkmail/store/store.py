"""``PgStore``: the job store on one connection, everything a worker or the CLI
calls, synchronously (see :mod:`bulkmail.store.aio` for the event loop).

The URL is a libpq URL; two query parameters of bulkmail's own are taken out
before connecting: ``schema`` (default ``bulkmail``) and ``job``
(``open_journal("postgresql://host/db?job=7")``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..journal.base import Outcome, Status
from ..message import Recipient
from . import jobs, leases, limits
from .connection import DEFAULT_SCHEMA, Database
from .errors import StoreError
from .journal import PgJournal
from .schema import migrate

__all__ = ["PgStore", "is_store_url", "open_pg_journal", "split_store_url"]


def is_store_url(target: str) -> bool:
    """Whether a ``--journal``/``--db`` value names PostgreSQL rather than a file."""
    return target.startswith(("postgresql://", "postgres://"))


def split_store_url(url: str) -> tuple[str, str, int | None]:
    """``(libpq URL, schema, job)`` from a store URL with bulkmail's parameters."""
    parts = urlsplit(url)
    schema, job = DEFAULT_SCHEMA, None
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        elif key == "job":
            try:
                job = int(value)
            except ValueError:
                raise StoreError(f"job must be a number, not {value!r}") from None
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), schema, job


class PgStore:
    """Jobs, recipients, leases and limits in one PostgreSQL schema.

    Opening migrates the schema (under an advisory lock: workers may start
    together).  One connection, used by one thread at a time; open one store
    per thread that should not wait for the others (``AsyncStore`` does).
    """

    def __init__(self, url: str, *, schema: str | None = None,
                 generic_plans: bool = False) -> None:
        conninfo, url_schema, _ = split_store_url(url)
        self.db = Database(conninfo, schema=schema or url_schema)
        try:
            migrate(self.db)
            if generic_plans:
                self.db.use_generic_plans()
        except BaseException:
            self.db.close()
            raise

    # jobs

    def create_job(self, *, identity: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None) -> int:
        return jobs.create_job(self.db, identity=identity, options=options)

    def load_recipients(self, job: int, recipients: Iterable[Recipient | str], *,
                        destination: Callable[[str], str] = jobs.by_domain) -> int:
        return jobs.load_recipients(self.db, job, recipients, destination=destination)

    def get_job(self, job: int) -> jobs.JobInfo:
        return jobs.get_job(self.db, job)

    def cancel_job(self, job: int) -> bool:
        return jobs.cancel_job(self.db, job)

    def finish_if_done(self, job: int) -> bool:
        return jobs.finish_if_done(self.db, job)

    def journal(self, job: int) -> PgJournal:
        """The job as a Journal, on this store's connection."""
        return PgJournal(self.db, job)

    def counts(self, job: int) -> dict[Status, int]:
        return PgJournal(self.db, job).counts()

    def leased_and_flagged(self, job: int) -> tuple[int, int]:
        """Recipients of ``job`` under a live lease, and those flagged
        ``possible_duplicate`` (``bulkmail job status``)."""
        with self.db.using() as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE lease_owner IS NOT NULL AND lease_expires > now()),"
                " count(*) FILTER (WHERE possible_duplicate) FROM recipients WHERE job = %s",
                (job,),
            ).fetchone()
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    # leases

    def claim(self, owner: str, max_items: int, lease_seconds: float, *,
              job: int | None = None) -> leases.Claim | None:
        return leases.claim(self.db, owner, max_items, lease_seconds, job=job)

    def claim_many(self, owner: str, per_destination: int, lease_seconds: float, *,
                   job: int | None = None, max_items: int | None = None,
                   max_destinations: int = 1) -> list[leases.Claim]:
        return leases.claim_many(self.db, owner, per_destination, lease_seconds, job=job,
                                 max_items=max_items, max_destinations=max_destinations)

    def heartbeat(self, owner: str, lease_seconds: float) -> int:
        return leases.heartbeat(self.db, owner, lease_seconds)

    def mark_in_doubt(self, owner: str, job: int, addresses: Sequence[str]) -> set[str]:
        return leases.mark_in_doubt(self.db, owner, job, addresses)

    def complete(self, owner: str, job: int,
                 groups: Sequence[tuple[Sequence[str], Outcome]]) -> set[str]:
        return leases.complete(self.db, owner, job, groups)

    def commit_writes(self, owner: str, writes: Sequence[leases.Write]) -> list[set[str]]:
        return leases.commit_writes(self.db, owner, writes)

    def release(self, owner: str, job: int | None = None,
                addresses: Sequence[str] | None = None) -> int:
        return leases.release(self.db, owner, job, addresses)

    # limits

    def acquire_seats(self, destination: str, cap: int, holder: str, lease_seconds: float,
                      count: int = 1) -> list[int]:
        return limits.acquire_seats(self.db, destination, cap, holder, lease_seconds, count)

    def release_seats(self, destination: str, slots: Sequence[int], holder: str) -> int:
        return limits.release_seats(self.db, destination, slots, holder)

    def seat_surplus(self, holder: str, caps: Mapping[str, int]) -> dict[str, int]:
        return limits.seat_surplus(self.db, holder, caps)

    def seat_shares(self, holder: str, caps: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        return limits.seat_shares(self.db, holder, caps)

    def take_tokens(self, destination: str, rate: float, burst: int, wanted: int, *,
                    now: float | None = None) -> limits.TokenGrant:
        return limits.take_tokens(self.db, destination, rate, burst, wanted, now=now)

    def pause_destination(self, destination: str, seconds: float, *, code: int | None = None,
                          enhanced: str | None = None,
                          reply: str | None = None) -> limits.Pause:
        return limits.pause_destination(self.db, destination, seconds, code=code,
                                        enhanced=enhanced, reply=reply)

    def paused(self, destination: str) -> limits.Pause | None:
        return limits.paused(self.db, destination)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PgStore {self.db!r}>"


def open_pg_journal(url: str) -> PgJournal:
    """The journal named by ``postgresql://...?job=ID`` (the journal seam's entry)."""
    _, _, job = split_store_url(url)
    if job is None:
        raise StoreError("a PostgreSQL journal URL needs ?job=ID (see 'bulkmail job create')")
    store = PgStore(url)
    try:
        return PgJournal(store.db, job, owns_db=True)
    except BaseException:
        store.close()
        raise
