"""Per-destination limits that hold for all workers together.

* **Seats**: a destination with a connection cap K has slots 0..K-1; a
  connection needs a slot, taken with ``FOR UPDATE SKIP LOCKED`` (never
  waiting) and held by the worker's lease.  The primary key and ``slot < K``
  make K the most there can be; a dead worker's seats expire with its
  heartbeat and are free again.  A worker that finds none free says so for a
  second (``seat_wants``); while others want, a worker takes seats only up
  to a fair share, K over the workers wanting, and one holding more gives the
  surplus back (:func:`seat_surplus`): the first worker to start no longer
  keeps every seat while the others' recipients wait.
* **Rate**: a GCRA per destination, advanced in one atomic statement that
  takes up to ``wanted`` tokens at once, so a worker pays one round trip for a
  transaction's worth of messages.  Time is the server's clock (one clock for
  the cluster) unless the caller passes its own ``now``.
* **Pause**: one worker's 421 or failed connection pauses the destination
  for every worker until a time; claims and seats skip it meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .connection import Database

__all__ = [
    "Pause", "TokenGrant", "acquire_seats", "pause_destination", "pause_left", "paused",
    "release_seats", "seat_shares", "seat_surplus", "take_tokens",
]

# the others that want seats of the destination now, and what the holder has
_OTHERS_WANTING = (
    "(SELECT count(*) FROM seat_wants WHERE destination = %(destination)s"
    " AND until > now() AND holder <> %(holder)s)"
)
_ACQUIRE = """
UPDATE seats AS s SET holder = %(holder)s, expires = now() + make_interval(secs => %(ttl)s)
FROM (SELECT slot FROM seats
      WHERE destination = %(destination)s AND slot < %(cap)s
        AND (holder IS NULL OR expires < now())
        AND NOT EXISTS (SELECT 1 FROM destinations
                        WHERE name = %(destination)s AND paused_until > now())
      ORDER BY slot
      LIMIT greatest(0, least(%(count)s,
          ceil(%(cap)s::float8 / (1 + """ + _OTHERS_WANTING + """))::integer
          - (SELECT count(*) FROM seats WHERE destination = %(destination)s
             AND holder = %(holder)s AND expires >= now())))
      FOR UPDATE SKIP LOCKED) AS free
WHERE s.destination = %(destination)s AND s.slot = free.slot
RETURNING s.slot
"""

#: how long a worker that found no seat counts as wanting one: longer than
#: the gaps between a busy worker's claims, so shares do not swing (and
#: sessions end and reconnect) each time one worker's queue runs dry briefly
WANT_SECONDS = 3.0


def acquire_seats(
    db: Database, destination: str, cap: int, holder: str, lease_seconds: float, count: int = 1,
) -> list[int]:
    """Up to ``count`` free seats of ``destination`` (cap ``cap``) for ``holder``,
    but no more than its fair share while other workers want seats.

    Returns the slots taken, possibly none (all held, the share reached, or
    the destination is paused); coming up short records that ``holder``
    wants seats.  Never waits for another acquirer.  Seats are held until
    :func:`release_seats`, or until ``holder``'s heartbeat stops.
    """
    if cap < 1 or count < 1:
        raise ValueError("cap and count must be positive")
    params = {"destination": destination, "cap": cap, "holder": holder,
              "ttl": float(lease_seconds), "count": count, "want": WANT_SECONDS}
    with db.using() as conn:
        slots = [int(r[0]) for r in conn.execute(_ACQUIRE.encode(), params).fetchall()]
        if len(slots) < count:
            # the slots may not exist yet (a new destination, or a raised cap)
            created = conn.execute(
                "INSERT INTO seats (destination, slot) SELECT %s, generate_series(0, %s - 1)"
                " ON CONFLICT DO NOTHING",
                (destination, cap),
            ).rowcount
            if created:
                params["count"] = count - len(slots)
                slots += [int(r[0]) for r in conn.execute(_ACQUIRE.encode(), params).fetchall()]
        if len(slots) < count:
            conn.execute(
                "INSERT INTO seat_wants (destination, holder, until)"
                " VALUES (%(destination)s, %(holder)s, now() + make_interval(secs => %(want)s))"
                " ON CONFLICT (destination, holder) DO UPDATE SET until = excluded.until",
                params,
            )
    return slots


def release_seats(db: Database, destination: str, slots: Sequence[int], holder: str) -> int:
    """Give seats back; returns how many ``holder`` still held.  A worker giving
    seats back wants none for now: its want ends (it says so again when short)."""
    with db.using() as conn:
        return conn.execute(
            "WITH unwant AS (DELETE FROM seat_wants WHERE destination = %s AND holder = %s)"
            " UPDATE seats SET holder = NULL, expires = NULL"
            " WHERE destination = %s AND slot = ANY(%s) AND holder = %s",
            (destination, holder, destination, list(slots), holder),
        ).rowcount


def seat_surplus(db: Database, holder: str, caps: Mapping[str, int]) -> dict[str, int]:
    """Per destination of ``caps`` where ``holder`` holds seats: how many more
    than its fair share it holds (``cap`` over the workers wanting seats there,
    itself included), 0 when within it."""
    return {d: max(0, held - share) for d, (held, share) in seat_shares(db, holder, caps).items()}


def seat_shares(
    db: Database, holder: str, caps: Mapping[str, int],
) -> dict[str, tuple[int, int]]:
    """Per destination of ``caps`` where ``holder`` holds seats: (seats held,
    its fair share now)."""
    if not caps:
        return {}
    with db.using() as conn:
        rows = conn.execute(
            "SELECT s.destination, count(*),"
            " (SELECT count(*) FROM seat_wants AS w WHERE w.destination = s.destination"
            "  AND w.until > now() AND w.holder <> %(holder)s)"
            " FROM seats AS s WHERE s.holder = %(holder)s AND s.destination = ANY(%(names)s)"
            " GROUP BY s.destination",
            {"holder": holder, "names": list(caps)},
        ).fetchall()
    return {
        str(name): (int(held), math.ceil(caps[str(name)] / (1 + int(others))))
        for name, held, others in rows
    }


@dataclass(frozen=True, slots=True)
class TokenGrant:
    granted: int  #: messages that may go now
    wait: float  #: seconds until the next token conforms (0 when some were granted)


# T = emission interval (1/rate), tau = tolerance ((burst - 1) * T).  A token
# conforms when tat0 - now <= tau, tat0 = max(tat, now); k tokens conform when
# tat0 + (k - 1) T - now <= tau.  The epsilon absorbs float rounding.
_GRANTS = (
    "least(%(wanted)s, greatest(0, floor((c.now + %(tau)s + %(t)s - greatest({tat}, c.now))"
    " / %(t)s + 1e-9)))::integer"
)
_TAKE = (
    "WITH c AS (SELECT coalesce(%(now)s::float8,"
    " extract(epoch FROM statement_timestamp())::float8) AS now)\n"
    "INSERT INTO rates AS g (destination, tat, granted)\n"
    "SELECT %(destination)s, c.now + " + _GRANTS.format(tat="c.now") + " * %(t)s, "
    + _GRANTS.format(tat="c.now") + " FROM c\n"
    "ON CONFLICT (destination) DO UPDATE SET\n"
    "    granted = (SELECT " + _GRANTS.format(tat="g.tat") + " FROM c),\n"
    "    tat = (SELECT greatest(g.tat, c.now) + " + _GRANTS.format(tat="g.tat")
    + " * %(t)s FROM c)\n"
    "RETURNING g.granted, g.tat, (SELECT now FROM c)"
)


def take_tokens(
    db: Database, destination: str, rate: float, burst: int, wanted: int,
    *, now: float | None = None,
) -> TokenGrant:
    """Take up to ``wanted`` tokens of ``destination``'s rate (per second, with
    ``burst`` at once), atomically for the whole cluster.

    ``now`` (unix seconds) replaces the server's clock: tests pass a fake one.
    """
    if rate <= 0 or burst < 1 or wanted < 1:
        raise ValueError("rate, burst and wanted must be positive")
    interval = 1.0 / rate
    params = {"destination": destination, "now": now, "t": interval,
              "tau": (burst - 1) * interval, "wanted": wanted}
    with db.using() as conn:
        row = conn.execute(_TAKE.encode(), params).fetchone()
    assert row is not None
    granted, tat, at = int(row[0]), float(row[1]), float(row[2])
    wait = 0.0 if granted else max(0.0, tat - (burst - 1) * interval - at)
    return TokenGrant(granted, wait)


@dataclass(frozen=True, slots=True)
class Pause:
    until: float  #: unix time
    code: int | None
    enhanced: str | None
    reply: str | None


def pause_destination(
    db: Database, destination: str, seconds: float, *, code: int | None = None,
    enhanced: str | None = None, reply: str | None = None,
) -> Pause:
    """Pause ``destination`` for all workers for ``seconds`` from now (server
    time), unless it is already paused longer; returns the pause in force."""
    with db.using() as conn:
        row = conn.execute(
            "INSERT INTO destinations AS d (name, paused_until, pause_code, pause_enhanced,"
            " pause_reply)"
            " VALUES (%(d)s, now() + make_interval(secs => %(s)s), %(code)s, %(enh)s, %(reply)s)"
            " ON CONFLICT (name) DO UPDATE SET"
            "  pause_code = CASE WHEN d.paused_until >= excluded.paused_until"
            "    THEN d.pause_code ELSE excluded.pause_code END,"
            "  pause_enhanced = CASE WHEN d.paused_until >= excluded.paused_until"
            "    THEN d.pause_enhanced ELSE excluded.pause_enhanced END,"
            "  pause_reply = CASE WHEN d.paused_until >= excluded.paused_until"
            "    THEN d.pause_reply ELSE excluded.pause_reply END,"
            "  paused_until = greatest(d.paused_until, excluded.paused_until)"
            " RETURNING extract(epoch FROM paused_until), pause_code, pause_enhanced,"
            "  pause_reply",
            {"d": destination, "s": float(seconds), "code": code, "enh": enhanced,
             "reply": reply},
        ).fetchone()
    assert row is not None
    return Pause(float(row[0]), row[1], row[2], row[3])


def paused(db: Database, destination: str) -> Pause | None:
    """The pause in force for ``destination``, if any."""
    with db.using() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM paused_until), pause_code, pause_enhanced, pause_reply"
            " FROM destinations WHERE name = %s AND paused_until > now()",
            (destination,),
        ).fetchone()
    return None if row is None else Pause(float(row[0]), row[1], row[2], row[3])


def pause_left(db: Database, destination: str) -> float:
    """Seconds ``destination`` stays paused, by the server's clock (0: not paused)."""
    with db.using() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM paused_until - now())::float8 FROM destinations"
            " WHERE name = %s AND paused_until > now()",
            (destination,),
        ).fetchone()
    return 0.0 if row is None else max(0.0, float(row[0]))
