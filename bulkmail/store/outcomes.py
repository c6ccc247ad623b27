"""Writing recipients' new states, with the journal's merge rules, set-based.

A worker's group commit is one statement whatever it carries (a row per
address with its own outcome); the journal's ``record`` is one statement per
outcome (a transaction's recipients share one).  The merge
rules are :meth:`bulkmail.journal.base.Journal.record`'s: the reply and host
keep their old values when the change carries none, attempts never decrease,
``possible_duplicate`` once raised stays raised.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import psycopg

from ..journal.base import Outcome
from ..results import Status
from .arrays import bool_array, float8_array, int4_array, int8_array, text_array
from .direct import Statement
from .jobs import by_domain

__all__ = [
    "FencedWrite", "apply_fenced", "apply_upsert", "needs_transaction",
]

# A retry time, or -infinity (ready now: pending, in doubt) or infinity (deferred
# with no retry left, or final): never NULL, so "ready" is one range condition
# the open-recipients index answers without reading the rows that wait.
_NEXT = (
    "CASE WHEN %(next_attempt)s::float8 IS NOT NULL THEN to_timestamp(%(next_attempt)s)"
    " WHEN %(status)s IN ('pending', 'in_flight', 'in_doubt') THEN '-infinity'::timestamptz"
    " ELSE 'infinity'::timestamptz END"
)

_MERGE = """
    state = %(status)s,
    code = coalesce(%(code)s, r.code),
    enhanced = CASE WHEN %(code)s::integer IS NULL THEN r.enhanced ELSE %(enhanced)s END,
    reply = CASE WHEN %(code)s::integer IS NULL THEN r.reply ELSE %(reply)s END,
    attempts = greatest(%(attempts)s, r.attempts),
    host = coalesce(%(host)s, r.host),
    next_attempt = """ + _NEXT + """,
    possible_duplicate = r.possible_duplicate OR %(dup)s,
    updated_at = now()
"""

_UPSERT = (
    "INSERT INTO recipients AS r (job, address, destination, state, code, enhanced, reply,"
    " attempts, host, next_attempt, possible_duplicate)\n"
    "SELECT %(job)s, a.address, a.destination, %(status)s, %(code)s, %(enhanced)s, %(reply)s,"
    " %(attempts)s, %(host)s, " + _NEXT + ", %(dup)s\n"
    "FROM unnest(%(addresses)s::text[], %(destinations)s::text[]) WITH ORDINALITY"
    " AS a(address, destination, n)\n"
    "ORDER BY a.n\n"
    "ON CONFLICT (job, address) DO UPDATE SET" + _MERGE
)


def _params(job: int, addresses: Sequence[str], o: Outcome) -> dict[str, object]:
    return {
        "job": job,
        "addresses": list(addresses),
        "status": o.status.value,
        "code": o.code,
        "enhanced": o.enhanced,
        "reply": o.reply,
        "attempts": o.attempts,
        "host": o.host,
        "next_attempt": o.next_attempt,
        "dup": o.possible_duplicate,
    }


#: one write of a group commit: job, addresses, outcome, release the leases?
FencedWrite = tuple[int, Sequence[str], Outcome, bool]

# Many writes, each with its own outcome, as one statement: a row per address
# (its write's number and values); the rows the worker still leases are locked
# in id order (as every statement locking its leased rows does), then updated
# with _MERGE's rules.  The fence is the lock's: FOR UPDATE re-checks the owner
# on the row's latest version, so a row taken over meanwhile drops out.  The
# CTE is materialised, locked once, then joined by id (planner statistics on
# lease_owner are always stale: a nested loop re-ran the locking subquery for
# every leased row, 60 ms for 100 addresses).  The owner test is written so no
# index can serve it (coalesce): the rows are found by (job, address), not by
# reading all the worker's leased rows each time (thousands, with 8 claims of
# 500 in flight).  One statement in autocommit is one round trip for the
# whole group commit, however many marks and results.  The arrays go in binary
# (%b): psycopg adapted twelve arrays of a commit of 11 addresses in ~123 us of
# Python as text, ~76 us in binary; encoded by ``arrays`` instead (twelve arrays
# of 4 addresses: 30 us instead of 84) and sent by ``direct`` (a prepared
# statement, its %(name)b parameters numbered in the order of _FENCED below).
_FENCED_ROWS = """
WITH w AS MATERIALIZED (
    SELECT r0.id, a.*
    FROM unnest(%(n)b::integer[], %(job)b::bigint[], %(address)b::text[], %(state)b::text[],
                %(code)b::integer[], %(enhanced)b::text[], %(reply)b::text[],
                %(attempts)b::integer[], %(host)b::text[], %(next_attempt)b::float8[],
                %(dup)b::boolean[], %(release)b::boolean[])
         AS a(n, job, address, state, code, enhanced, reply, attempts, host, next_attempt,
              dup, release)
    JOIN recipients AS r0 ON r0.job = a.job AND r0.address = a.address
    WHERE coalesce(r0.lease_owner, '') = %(owner)s
    ORDER BY r0.id
    FOR UPDATE OF r0
)
UPDATE recipients AS r SET
    state = w.state,
    code = coalesce(w.code, r.code),
    enhanced = CASE WHEN w.code IS NULL THEN r.enhanced ELSE w.enhanced END,
    reply = CASE WHEN w.code IS NULL THEN r.reply ELSE w.reply END,
    attempts = greatest(w.attempts, r.attempts),
    host = coalesce(w.host, r.host),
    next_attempt = CASE WHEN w.next_attempt IS NOT NULL THEN to_timestamp(w.next_attempt)
        WHEN w.state IN ('pending', 'in_flight', 'in_doubt') THEN '-infinity'::timestamptz
        ELSE 'infinity'::timestamptz END,
    possible_duplicate = r.possible_duplicate OR w.dup,
    updated_at = now(),
    lease_owner = CASE WHEN w.release THEN NULL ELSE r.lease_owner END,
    lease_expires = CASE WHEN w.release THEN NULL ELSE r.lease_expires END
FROM w
WHERE r.id = w.id
RETURNING w.n, r.address
"""


# The in-doubt mark (the fenced write on every transaction's path) changes only
# the state (and readiness, already -infinity unless a retry): the same fence
# and lock order as _FENCED_ROWS, three arrays instead of twelve and no merge
# of values it does not carry.  Measured (one connection, 5,000 recipients,
# a mark each, generic plans): 174 -> 148 us of PostgreSQL CPU per mark.
_MARK_ROWS = """
WITH w AS MATERIALIZED (
    SELECT r0.id, a.n
    FROM unnest(%(n)b::integer[], %(job)b::bigint[], %(address)b::text[]) AS a(n, job, address)
    JOIN recipients AS r0 ON r0.job = a.job AND r0.address = a.address
    WHERE coalesce(r0.lease_owner, '') = %(owner)s
    ORDER BY r0.id
    FOR UPDATE OF r0
)
UPDATE recipients AS r SET state = 'in_doubt', next_attempt = '-infinity', updated_at = now()
FROM w
WHERE r.id = w.id
RETURNING w.n, r.address
"""

_MARK = Outcome(Status.IN_DOUBT)
_MARK_ARRAYS = ("n", "job", "address")
_FENCED_ARRAYS = (*_MARK_ARRAYS, "state", "code", "enhanced", "reply", "attempts", "host",
                  "next_attempt", "dup", "release")
_FENCED = Statement(_FENCED_ROWS, (*_FENCED_ARRAYS, "owner"))
_MARKS = Statement(_MARK_ROWS, (*_MARK_ARRAYS, "owner"))
_UNPACK_N = struct.Struct("!i").unpack


def _segments(writes: Sequence[FencedWrite]) -> list[list[int]]:
    """``writes``' indexes cut where a recipient comes back: one UPDATE cannot
    change a row twice, and a later write must see the earlier one's effect."""
    segments: list[list[int]] = [[]]
    seen: set[tuple[int, str]] = set()
    for i, (job, addresses, _, _) in enumerate(writes):
        keys = {(job, a) for a in addresses}
        if not seen.isdisjoint(keys):
            if segments[-1]:
                segments.append([])
            seen = set()
        segments[-1].append(i)
        seen |= keys
    return segments


def apply_fenced(
    conn: psycopg.Connection[tuple[Any, ...]],
    owner: str,
    writes: Sequence[FencedWrite],
) -> list[set[str]]:
    """Apply each write's outcome to the recipients ``owner`` still leases, so a
    recipient another worker took over is not overwritten by a late result
    (that worker's send is the one that counts); per write, the addresses
    applied.  ``release`` gives the leases back (a result); without it the
    lease stays (the in-doubt mark before an end of data).

    One statement when no recipient appears twice (the usual group commit):
    in autocommit that is a transaction of its own and a single round trip.
    Otherwise one statement per stretch without a repeat -- call it inside a
    transaction then (:func:`needs_transaction`).
    """
    applied: list[set[str]] = [set() for _ in writes]
    for segment in _segments(writes):
        cols: dict[str, list[Any]] = {k: [] for k in (
            "n", "job", "address", "state", "code", "enhanced", "reply", "attempts", "host",
            "next_attempt", "dup", "release")}
        for i in segment:
            job, addresses, o, release = writes[i]
            if len(addresses) > 1 and len(set(addresses)) < len(addresses):
                addresses = list(dict.fromkeys(addresses))  # one write, one row each
            k = len(addresses)
            cols["n"] += [i] * k
            cols["job"] += [job] * k
            cols["address"] += addresses
            cols["state"] += [o.status.value] * k
            cols["code"] += [o.code] * k
            cols["enhanced"] += [o.enhanced] * k
            cols["reply"] += [o.reply] * k
            cols["attempts"] += [o.attempts] * k
            cols["host"] += [o.host] * k
            cols["next_attempt"] += [o.next_attempt] * k
            cols["dup"] += [o.possible_duplicate] * k
            cols["release"] += [release] * k
        if not cols["n"]:
            continue
        params = [int4_array(cols["n"]), int8_array(cols["job"]), text_array(cols["address"])]
        if all(writes[i][2] == _MARK and not writes[i][3] for i in segment):
            statement = _MARKS
        else:
            statement = _FENCED
            params += [
                text_array(cols["state"]), int4_array(cols["code"]),
                text_array(cols["enhanced"]), text_array(cols["reply"]),
                int4_array(cols["attempts"]), text_array(cols["host"]),
                float8_array(cols["next_attempt"]), bool_array(cols["dup"]),
                bool_array(cols["release"]),
            ]
        params.append(owner.encode())
        result = statement.run(conn, params)
        for row in range(result.ntuples):
            n, address = result.get_value(row, 0), result.get_value(row, 1)
            assert n is not None and address is not None
            applied[_UNPACK_N(n)[0]].add(bytes(address).decode())
    return applied


def needs_transaction(writes: Sequence[FencedWrite]) -> bool:
    """Whether :func:`apply_fenced` takes more than one statement."""
    return len(_segments(writes)) > 1


def apply_upsert(
    conn: psycopg.Connection[tuple[Any, ...]],
    job: int,
    groups: Sequence[tuple[Sequence[str], Outcome]],
) -> None:
    """Apply the outcomes whoever leases the recipients, adding unknown addresses
    (the journal's ``record``: single-process sends, bounces applied later).

    A repeated address within one outcome is applied once (ON CONFLICT cannot
    touch a row twice in one statement).  Call inside a transaction.
    """
    with conn.cursor() as cur:
        for addresses, outcome in groups:
            unique = list(dict.fromkeys(addresses))
            if not unique:
                continue
            params = _params(job, unique, outcome)
            destinations = [by_domain(a) for a in unique]
            params["destinations"] = destinations
            cur.execute(_UPSERT, params)
            cur.execute(
                "INSERT INTO job_destinations (job, destination)"
                " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (job, sorted(set(destinations))),
            )
