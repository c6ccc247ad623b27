"""Reply rules' actions and warm-up counters in PostgreSQL, for all workers.

* **Actions**: a worker whose reply rule fires records the action here (the
  rule, the triggering reply, until when, by the server's clock); every
  worker reads the ones in force and obeys them as if its own reply had
  triggered them.  The rows stay afterwards: they are the job's log
  (``bulkmail job status``).  A ``suspend`` also pauses the destination
  (``limits.pause_destination``), so no seat is handed out meanwhile --
  at once, before the other workers have read the action.
* **Warm-up counters**: ``reserve`` grants at most what is left of a window's
  cap in one statement (the row's lock orders concurrent workers), so
  workers together never pass the cap; counts outlive every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from ..delivery.health import action_words
from .connection import Database
from .limits import pause_destination

__all__ = [
    "ActionRecord", "actions_in_force", "bounce_rest", "describe_record", "first_day",
    "recent_actions", "record_action", "release_warmup", "reserve_warmup", "warmup_counts",
]


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One row of ``shaping_actions``."""

    id: int
    destination: str
    kind: str
    source: str | None
    #: seconds it stays in force from when it was read (None: bounce-rest)
    left: float | None
    connections: int | None
    rate: float | None
    rule: str
    code: int
    enhanced: str | None
    reply: str
    job: int | None
    worker: str
    at: float  #: unix time it was recorded
    #: bounce-rest: the job's claim destination (a domain) whose rest bounces
    claim: str | None = None


_COLUMNS = (
    "id, destination, kind, source,"
    " extract(epoch FROM until - now())::float8, connections, rate, rule, code, enhanced,"
    " reply, job, worker, extract(epoch FROM at)::float8, claim"
)


def record_action(
    db: Database, *, destination: str, kind: str, source: str | None, duration: float,
    connections: int | None, rate: float | None, rule: str, code: int,
    enhanced: str | None, reply: str, job: int | None, worker: str, claim: str | None = None,
) -> ActionRecord:
    """Log an action (in force for ``duration`` seconds from now, server time;
    bounce-rest: 0, for its job) and, for ``suspend``, pause the destination."""
    if kind == "suspend":
        pause_destination(db, destination, duration, code=code, enhanced=enhanced, reply=reply)
    with db.using() as conn:
        row = conn.execute(
            "INSERT INTO shaping_actions (destination, kind, source, until, connections, rate,"
            " rule, code, enhanced, reply, job, worker, claim) VALUES (%(d)s, %(k)s, %(s)s,"
            " CASE WHEN %(k)s = 'bounce-rest' THEN NULL"
            "  ELSE now() + make_interval(secs => %(secs)s) END,"
            " %(c)s, %(r)s, %(rule)s, %(code)s, %(enh)s, %(reply)s, %(job)s, %(w)s, %(claim)s)"
            " RETURNING " + _COLUMNS,
            {"d": destination, "k": kind, "s": source, "secs": float(duration),
             "c": connections, "r": rate, "rule": rule, "code": code, "enh": enhanced,
             "reply": reply, "job": job, "w": worker, "claim": claim},
        ).fetchone()
    assert row is not None
    return ActionRecord(*row)


def bounce_rest(db: Database, job: int, destination: str, reply: str) -> int:
    """A bounce-rest for ``job``: its recipients of ``destination`` (a claim's
    destination) that nobody holds now end bounced with ``reply`` (550 5.7.1);
    returns how many.  Rows locked in id order, skipping leased ones (a
    worker that claims them later bounces them itself)."""
    with db.using() as conn, conn.transaction():
        ids = [row[0] for row in conn.execute(
            "SELECT id FROM recipients WHERE job = %s AND destination = %s"
            " AND state IN ('pending', 'deferred')"
            " AND (lease_expires IS NULL OR lease_expires < now())"
            " ORDER BY id FOR UPDATE SKIP LOCKED", (job, destination)).fetchall()]
        if not ids:
            return 0
        return conn.execute(
            "UPDATE recipients SET state = 'bounced', code = 550, enhanced = '5.7.1',"
            " reply = %s, next_attempt = 'infinity', lease_owner = NULL, lease_expires = NULL,"
            " updated_at = now() WHERE id = ANY(%s)", (reply, ids)).rowcount


def actions_in_force(db: Database) -> list[ActionRecord]:
    """Every timed action not over yet, and the bounce-rest ones of active
    jobs (they last for their job)."""
    with db.using() as conn:
        rows = conn.execute(
            "SELECT " + _COLUMNS + " FROM shaping_actions WHERE until > now()"
            " OR (until IS NULL AND job IN (SELECT id FROM jobs WHERE state = 'active'))"
            " ORDER BY id"
        ).fetchall()
    return [ActionRecord(*row) for row in rows]


def recent_actions(db: Database, since: float, limit: int = 20) -> list[ActionRecord]:
    """The log: the last ``limit`` actions recorded since ``since`` (unix
    time), oldest first.  Destinations are shared by jobs, so are actions."""
    with db.using() as conn:
        rows = conn.execute(
            "SELECT * FROM (SELECT " + _COLUMNS + " FROM shaping_actions"
            " WHERE at >= to_timestamp(%(since)s) ORDER BY id DESC LIMIT %(n)s) a ORDER BY id",
            {"since": since, "n": limit},
        ).fetchall()
    return [ActionRecord(*row) for row in rows]


def describe_record(record: ActionRecord) -> str:
    """One log line, as the worker that took the action printed it, with when and who."""
    when = datetime.fromtimestamp(record.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    what = action_words(record.kind, record.source, record.connections, record.rate)
    state = ""
    if record.left is not None:
        state = f" ({record.left:.0f}s left)" if record.left > 0 else " (over)"
    reply = " ".join(part for part in (str(record.code), record.enhanced or "", record.reply)
                     if part)
    return (f"{when} {what} {record.destination} ({record.rule}){state} by {record.worker}"
            f" after \"{reply}\"")


# -- warm-up counters -----------------------------------------------------------


def first_day(db: Database, source: str, pattern: str, today: date) -> date:
    """Day 1 of ``source``'s schedule for ``pattern``: the first day any worker asked."""
    with db.using() as conn:
        conn.execute(
            "INSERT INTO warmup_start VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (source, pattern, today),
        )
        row = conn.execute(
            "SELECT first_day FROM warmup_start WHERE source = %s AND pattern = %s",
            (source, pattern),
        ).fetchone()
    assert row is not None
    day: date = row[0]
    return day


# Every right-hand side reads the row as it was: ``granted`` is what this
# call got, ``sent`` the count after it, both in one atomic statement.
_RESERVE = """
INSERT INTO warmup_sent AS w (source, pattern, window_start, sent, granted)
VALUES (%(s)s, %(p)s, %(w)s, least(%(n)s, %(cap)s), least(%(n)s, %(cap)s))
ON CONFLICT (source, pattern, window_start) DO UPDATE SET
    granted = least(%(n)s, greatest(0, %(cap)s - w.sent)),
    sent = w.sent + least(%(n)s, greatest(0, %(cap)s - w.sent))
RETURNING granted, sent
"""


def reserve_warmup(
    db: Database, source: str, pattern: str, window: int, wanted: int, cap: int,
) -> tuple[int, int]:
    """Count up to ``wanted`` more in ``window`` without passing ``cap``, for
    every worker together: (granted, the window's count after it)."""
    if wanted < 1 or cap < 0:
        raise ValueError("wanted must be positive and cap not negative")
    with db.using() as conn:
        row = conn.execute(_RESERVE.encode(), {"s": source, "p": pattern, "w": window,
                                               "n": wanted, "cap": cap}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def release_warmup(db: Database, source: str, pattern: str, window: int, count: int) -> None:
    """Give back ``count`` granted but never sent."""
    with db.using() as conn:
        conn.execute(
            "UPDATE warmup_sent SET sent = greatest(0, sent - %s)"
            " WHERE source = %s AND pattern = %s AND window_start = %s",
            (count, source, pattern, window),
        )


def warmup_counts(
    db: Database, since: int,
) -> tuple[dict[tuple[str, str], date], dict[tuple[str, str, int], int]]:
    """Every schedule's day 1, and the counts of windows starting at ``since`` or later."""
    with db.using() as conn:
        starts = conn.execute("SELECT source, pattern, first_day FROM warmup_start").fetchall()
        counts = conn.execute(
            "SELECT source, pattern, window_start, sent FROM warmup_sent"
            " WHERE window_start >= %s", (since,),
        ).fetchall()
    return ({(s, p): d for s, p, d in starts},
            {(s, p, int(w)): int(n) for s, p, w, n in counts})
