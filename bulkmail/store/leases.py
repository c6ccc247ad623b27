"""Workers lease recipients, a destination's worth at a time.

A claim takes ready recipients grouped by destination (so a destination's
can share SMTP transactions), of one destination or of several in one
statement, with ``FOR UPDATE SKIP LOCKED``:
concurrent claimers never get the same row, and wait for each other only in
a claim's last try, for one destination.
Each leased row carries its owner and an expiry that the owner's heartbeat
pushes forward; once it passes, any worker may claim the row again.

The in-doubt rule across workers: a worker marks recipients in doubt (a
committed state, still leased) before their end of data leaves.  A worker
that later claims an expired in-doubt recipient resends it once, flagged
``possible_duplicate``.  Every write is fenced by the lease owner, so a
worker whose recipients were taken over cannot overwrite the new owner's
result, and learns which ones it lost.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..journal.base import Outcome
from ..message import Recipient
from ..results import Status
from .connection import Database
from .errors import StoreError
from .outcomes import FencedWrite, apply_fenced, needs_transaction

__all__ = [
    "IN_DOUBT", "Claim", "ClaimedRecipient", "Write", "claim", "claim_many", "commit_writes",
    "complete",
    "heartbeat", "mark_in_doubt", "new_owner_id", "release",
]

#: how often a claim whose destination was emptied under it tries another
_CLAIM_TRIES = 4

_READY = """
    {r}.state IN ('pending', 'in_flight', 'in_doubt', 'deferred')
    AND {r}.next_attempt <= now()
    AND ({r}.lease_expires IS NULL OR {r}.lease_expires < now())
"""

# 1. the least recently claimed destinations of active jobs that are not
#    paused and have ready recipients (SKIP LOCKED: concurrent claimers spread
#    over destinations; the last try waits instead, for a job with one);
#    few at a time (``claim_many``'s ``max_destinations``), so the planner
#    walks one job's rotation index lazily instead of testing every
#    destination of the job for ready recipients and sorting them (256 of
#    200: 78 ms; without a job, every active job's are sorted, as always);
# 2. each one's ready recipients, soonest first, skipping rows other claims
#    hold, at most ``per`` of a destination and ``limit`` in all: the lateral
#    subquery is read lazily, so a destination past the limit is not read and
#    none of its rows is locked;
# 3. the destinations that gave rows go to the back of the rotation (one that
#    gave none -- its rows all held by a concurrent claim -- stays in front);
# 4. lease the rows, and flag the in-doubt ones: they are about to be resent.
_CLAIM = """
WITH dest AS (
    SELECT jd.job, jd.destination
    FROM job_destinations AS jd
    JOIN jobs AS j ON j.id = jd.job AND j.state = 'active'
    WHERE (%(job)s::bigint IS NULL OR jd.job = %(job)s)
      AND NOT EXISTS (SELECT 1 FROM destinations AS d
                      WHERE d.name = jd.destination AND d.paused_until > now())
      AND EXISTS (SELECT 1 FROM recipients AS r
                  WHERE r.job = jd.job AND r.destination = jd.destination AND """ + _READY.format(
    r="r") + """)
    ORDER BY jd.claimed_at NULLS FIRST  -- nothing more: the index's order, read lazily
    LIMIT %(destinations)s
    FOR UPDATE OF jd {skip}
),
picked AS MATERIALIZED (
    -- per destination, an index scan that hands out rows already in order
    SELECT p.id, dest.job, dest.destination
    FROM dest CROSS JOIN LATERAL (
        SELECT r.id FROM recipients AS r
        WHERE r.job = dest.job AND r.destination = dest.destination AND """ + _READY.format(
    r="r") + """
        ORDER BY r.next_attempt, r.id
        LIMIT %(per)s
        FOR UPDATE OF r SKIP LOCKED
    ) AS p
    LIMIT %(limit)s
),
rotated AS (
    UPDATE job_destinations AS jd SET claimed_at = clock_timestamp()
    FROM (SELECT DISTINCT job, destination FROM picked) AS c
    WHERE jd.job = c.job AND jd.destination = c.destination
)
UPDATE recipients AS r
SET lease_owner = %(owner)s,
    lease_expires = now() + make_interval(secs => %(ttl)s),
    possible_duplicate = r.possible_duplicate OR r.state = 'in_doubt'
FROM picked WHERE r.id = picked.id
RETURNING r.job, r.destination, r.address, r.variables, r.state, r.attempts,
          r.possible_duplicate
"""


# Every statement that locks several recipient rows a worker leases locks them
# in id order first (the heartbeat, the group commit, a release): two of one
# worker's transactions on different connections then wait for each other
# instead of deadlocking (they did, when each updated in its own scan order).
LOCK_LEASED = "SELECT id FROM recipients WHERE lease_owner = %s ORDER BY id FOR UPDATE"


def lock_rows(conn: Any, writes: Sequence[tuple[int, Sequence[str]]]) -> None:
    """Lock the rows of ``writes`` (job, addresses) in id order, in the caller's
    transaction, before updating them one write at a time."""
    jobs = [job for job, addresses in writes for _ in addresses]
    addresses = [a for _, group in writes for a in group]
    if addresses:
        conn.execute(
            "SELECT r.id FROM recipients AS r"
            " JOIN unnest(%s::bigint[], %s::text[]) AS w(job, address)"
            "   ON r.job = w.job AND r.address = w.address"
            " ORDER BY r.id FOR UPDATE OF r",
            (jobs, addresses),
        )


def new_owner_id() -> str:
    """A lease owner name for this worker: readable in the database (host and
    pid), unique even when a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class ClaimedRecipient:
    address: str
    variables: dict[str, str] | None
    status: Status  #: as it was when claimed: pending, deferred, in doubt (a takeover)
    attempts: int
    possible_duplicate: bool  #: resend of an in-doubt recipient, or one already flagged

    def recipient(self) -> Recipient:
        """As the engine takes it."""
        return Recipient(self.address, self.variables, self.possible_duplicate)


@dataclass(frozen=True, slots=True)
class Claim:
    """Recipients of one job and one destination, leased to one worker."""

    job: int
    destination: str
    recipients: tuple[ClaimedRecipient, ...]

    def __len__(self) -> int:
        return len(self.recipients)


def claim(
    db: Database, owner: str, max_items: int, lease_seconds: float, *, job: int | None = None,
) -> Claim | None:
    """Lease up to ``max_items`` ready recipients of one destination to ``owner``.

    ``job=None`` takes from any active job.  ``None`` means nothing is ready
    *now* (all leased, paused, waiting for a retry, or the job ended): it is
    not "the job is done" (see ``finish_if_done``).
    """
    claims = claim_many(db, owner, max_items, lease_seconds, job=job)
    return claims[0] if claims else None


def claim_many(
    db: Database, owner: str, per_destination: int, lease_seconds: float, *,
    job: int | None = None, max_items: int | None = None, max_destinations: int = 1,
) -> list[Claim]:
    """Lease ready recipients of up to ``max_destinations`` destinations to
    ``owner`` in one statement: at most ``per_destination`` of each and
    ``max_items`` (default ``per_destination``) in all; a claim per destination.

    One round trip for many small destinations (a long tail of domains),
    where a claim each cost a statement per recipient.  An empty list means
    nothing is ready *now*, as :func:`claim`'s ``None``.
    """
    total = per_destination if max_items is None else max_items
    if per_destination < 1 or total < 1 or max_destinations < 1 or lease_seconds <= 0:
        raise ValueError("claim sizes and lease_seconds must be positive")
    params: dict[str, Any] = {"job": job, "per": per_destination, "limit": total,
                              "destinations": max_destinations, "owner": owner,
                              "ttl": float(lease_seconds)}
    for attempt in range(_CLAIM_TRIES):
        waits = attempt == _CLAIM_TRIES - 1
        if waits:
            # the try that waits for a destination's lock takes one, as before
            # claim_many: waiting for a second while holding a first (and its
            # rows) could deadlock with a claimer that met the rotation's new
            # order and holds the second
            params["destinations"] = 1
        query = _CLAIM.format(skip="" if waits else "SKIP LOCKED")
        with db.using() as conn:
            rows = conn.execute(query.encode(), params, prepare=False).fetchall()
        if rows:
            return _claims(rows)
    return []


def _claims(rows: Sequence[tuple[Any, ...]]) -> list[Claim]:
    """The claimed rows, a :class:`Claim` per (job, destination)."""
    grouped: dict[tuple[int, str], list[ClaimedRecipient]] = {}
    for job, destination, address, variables, state, attempts, dup in rows:
        grouped.setdefault((int(job), str(destination)), []).append(
            ClaimedRecipient(str(address), variables, Status(state), int(attempts), bool(dup)))
    return [Claim(job, destination, tuple(recipients))
            for (job, destination), recipients in grouped.items()]


def heartbeat(db: Database, owner: str, lease_seconds: float) -> int:
    """Push the expiry of ``owner``'s leases (recipients and seats) forward.

    Returns how many recipients it still leases.  Leases that already expired
    are extended too unless another worker took them over meanwhile, which
    is then visible in the fenced writes.
    """
    with db.using() as conn, conn.transaction():
        cur = conn.execute(
            "UPDATE recipients AS r SET lease_expires = now() + make_interval(secs => %s)"
            " FROM (" + LOCK_LEASED + ") AS l WHERE r.id = l.id",
            (float(lease_seconds), owner),
        )
        leased = cur.rowcount
        conn.execute(
            "UPDATE seats AS s SET expires = now() + make_interval(secs => %s)"
            " FROM (SELECT destination, slot FROM seats WHERE holder = %s"
            "       ORDER BY destination, slot FOR UPDATE) AS l"
            " WHERE s.destination = l.destination AND s.slot = l.slot",
            (float(lease_seconds), owner),
        )
    return leased


IN_DOUBT = Outcome(Status.IN_DOUBT)

#: one queued write of the group commit: job, addresses, outcome, release the leases?
Write = FencedWrite


def mark_in_doubt(db: Database, owner: str, job: int, addresses: Sequence[str]) -> set[str]:
    """Commit ``addresses`` as in doubt, keeping the lease; the addresses marked.

    Send the end of data only to those returned: any other was taken over by
    another worker, who will send it.
    """
    return commit_writes(db, owner, [(job, addresses, IN_DOUBT, False)])[0]


def complete(
    db: Database, owner: str, job: int, groups: Sequence[tuple[Sequence[str], Outcome]],
) -> set[str]:
    """Record results and give their leases back, in one transaction.

    Returns the addresses *not* written because ``owner`` no longer leases
    them (taken over after its lease expired): the new owner's result counts.
    """
    applied = commit_writes(db, owner, [(job, addresses, o, True) for addresses, o in groups])
    return {a for addresses, _ in groups for a in addresses}.difference(*applied)


def commit_writes(db: Database, owner: str, writes: Sequence[Write]) -> list[set[str]]:
    """Apply ``writes`` in order in one transaction (the async writer's group
    commit); per write, the addresses ``owner`` still leased and so wrote.

    Usually a single statement, committed on its own: one round trip for
    every mark and result of the batch."""
    with db.using() as conn:
        if needs_transaction(writes):  # several statements: lock all rows first, in order
            with conn.transaction():
                lock_rows(conn, [(job, addresses) for job, addresses, _, _ in writes])
                return apply_fenced(conn, owner, writes)
        return apply_fenced(conn, owner, writes)


def release(db: Database, owner: str, job: int | None = None,
            addresses: Sequence[str] | None = None) -> int:
    """Give leases back without a result (a clean stop); returns how many.

    All of ``owner``'s leases, or those of one job, or only ``addresses``.
    Seats are released too when everything is released.
    """
    if addresses is not None and job is None:
        raise StoreError("releasing addresses needs their job")
    with db.using() as conn, conn.transaction():
        if addresses is not None:
            assert job is not None
            lock_rows(conn, [(job, addresses)])
            cur = conn.execute(
                "UPDATE recipients SET lease_owner = NULL, lease_expires = NULL"
                " WHERE job = %s AND address = ANY(%s) AND lease_owner = %s",
                (job, list(addresses), owner),
            )
            return cur.rowcount
        cur = conn.execute(
            "UPDATE recipients AS r SET lease_owner = NULL, lease_expires = NULL"
            " FROM (" + LOCK_LEASED + ") AS l"
            " WHERE r.id = l.id AND (%s::bigint IS NULL OR r.job = %s)",
            (owner, job, job),
        )
        if job is None:
            conn.execute("DELETE FROM seat_wants WHERE holder = %s", (owner,))
            conn.execute(
                "UPDATE seats AS s SET holder = NULL, expires = NULL"
                " FROM (SELECT destination, slot FROM seats WHERE holder = %s"
                "       ORDER BY destination, slot FOR UPDATE) AS l"
                " WHERE s.destination = l.destination AND s.slot = l.slot",
                (owner,),
            )
        return cur.rowcount
