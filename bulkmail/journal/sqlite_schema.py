"""The SQLite journal's file format: its tables, their version, and the
statements that write them.

Outcomes are appended to ``events`` (one row per group commit's outcome, its
addresses a JSON array) and folded into ``recipients`` at the end of a run
or when read; ``domain_of`` and ``json_array`` compute in Python what the
statements compute in SQL, for the rows that bypass the log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["APPEND", "FOLD", "SCHEMA", "SCHEMA_VERSION", "UPSERT", "domain_of", "json_array"]

#: stored in ``PRAGMA user_version``; a newer file is refused, not misread
SCHEMA_VERSION = 2  # 2: the events log

SCHEMA = """
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

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    addresses TEXT NOT NULL,  -- a JSON array of the addresses this outcome applies to
    status TEXT NOT NULL,
    code INTEGER,
    enhanced TEXT,
    reply TEXT,
    attempts INTEGER NOT NULL,
    host TEXT,
    next_attempt REAL,
    possible_duplicate INTEGER NOT NULL,
    at REAL NOT NULL
);
"""

#: the merge rules of Journal.record, for a change meeting a stored record
MERGE = """
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

# The events, applied in the order they were appended (and within one event,
# in its array's order); the domain is what follows the last "@" (rtrim strips
# every character but "@").
FOLD = """
INSERT INTO recipients (address, domain, status, code, enhanced, reply, attempts, host,
                        next_attempt, possible_duplicate, updated_at)
SELECT a.value,
       CASE WHEN instr(a.value, '@') = 0 THEN ''
            ELSE lower(substr(a.value, length(rtrim(a.value, replace(a.value, '@', ''))) + 1))
       END,
       e.status, e.code, e.enhanced, e.reply, e.attempts, e.host, e.next_attempt,
       e.possible_duplicate, e.at
FROM events AS e, json_each(e.addresses) AS a
WHERE e.rowid <= ?
ORDER BY e.rowid, a.key
""" + MERGE

# The rare address the events log cannot carry (a NUL does not survive
# SQLite's JSON functions) is merged into ``recipients`` at once, per address.
UPSERT = """
INSERT INTO recipients (address, domain, status, code, enhanced, reply, attempts, host,
                        next_attempt, possible_duplicate, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
""" + MERGE

APPEND = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

def json_array(addresses: Sequence[str]) -> str | None:
    """``json.dumps(list(addresses))``, built directly when nothing needs escaping
    (the common case: only quoted local parts hold quotes or backslashes);
    ``None`` if an address holds a NUL, which SQLite's JSON would cut short."""
    joined = '","'.join(addresses)
    # besides quotes and backslashes, JSON escapes control characters, which
    # are not printable (isprintable is a third of a regex search's cost)
    if (
        joined.count('"') != 2 * (len(addresses) - 1)
        or "\\" in joined
        or not joined.isprintable()
    ):
        if "\x00" in joined:
            return None
        return json.dumps(list(addresses), ensure_ascii=False)
    return f'["{joined}"]'


def domain_of(address: str) -> str:
    """As the fold computes it: lower-case, after the last "@" ("" without one)."""
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else ""
