"""Writing recipients' new states, with the journal's merge rules, set-based.

One statement per outcome: a transaction's recipients share one outcome, so
a group commit of hundreds of results is a handful of statements.  The merge
rules are :meth:`bulkmail.journal.base.Journal.record`'s: the reply and host
keep their old values when the change carries none, attempts never decrease,
``possible_duplicate`` once raised stays raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ..journal.base import Outcome
from .jobs import by_domain

__all__ = ["apply_fenced", "apply_upsert"]

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

# Only rows the worker still leases: a recipient another worker took over is
# not overwritten by a late result (that worker's send is the one that counts).
_FENCED = (
    "UPDATE recipients AS r SET" + _MERGE + ",\n"
    "    lease_owner = CASE WHEN %(release)s THEN NULL ELSE r.lease_owner END,\n"
    "    lease_expires = CASE WHEN %(release)s THEN NULL ELSE r.lease_expires END\n"
    "WHERE r.job = %(job)s AND r.address = ANY(%(addresses)s) AND r.lease_owner = %(owner)s\n"
    "RETURNING r.address"
)

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


def apply_fenced(
    conn: psycopg.Connection[tuple[Any, ...]],
    job: int,
    owner: str,
    groups: Sequence[tuple[Sequence[str], Outcome]],
    *,
    release: bool,
) -> set[str]:
    """Apply the outcomes to the recipients ``owner`` leases; the addresses applied.

    ``release`` gives the leases back (a result); without it the lease stays
    (the in-doubt mark before an end of data).  Call inside a transaction.
    """
    applied: set[str] = set()
    with conn.cursor() as cur:
        for addresses, outcome in groups:
            if not addresses:
                continue
            params = _params(job, addresses, outcome)
            params["owner"] = owner
            params["release"] = release
            cur.execute(_FENCED, params)
            applied.update(str(row[0]) for row in cur.fetchall())
    return applied


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
