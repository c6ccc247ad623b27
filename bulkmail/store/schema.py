"""The store's tables, created and migrated by the program, never by hand.

Migrations are numbered and applied in order, each recorded in
``schema_version``, all in one transaction under an advisory lock: two
workers starting together serialise here, the second finds nothing to do.  A
database migrated by a newer bulkmail is refused rather than misread.

Times are ``timestamptz`` from the server's clock (one clock for the whole
cluster), except the GCRA's theoretical arrival time, which is seconds as a
float so callers (and tests) can pass their own clock.
"""

from __future__ import annotations

from psycopg import sql

from .connection import Database
from .errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

#: states a claim may take; 'deferred' only while it has a next attempt
OPEN_STATES = ("pending", "in_flight", "in_doubt", "deferred")

_V1 = """
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'cancelled', 'done')),
    identity jsonb NOT NULL DEFAULT '{}',  -- sender, message hash: what makes the job itself
    options jsonb NOT NULL DEFAULT '{}'  -- retry schedule, max rcpts, DKIM ...: how to send it
);

CREATE TABLE job_meta (
    job bigint NOT NULL REFERENCES jobs ON DELETE CASCADE,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (job, key)
);

-- one row per destination of a job: claims rotate over them (claimed_at)
CREATE TABLE job_destinations (
    job bigint NOT NULL REFERENCES jobs ON DELETE CASCADE,
    destination text NOT NULL,
    claimed_at timestamptz,
    PRIMARY KEY (job, destination)
);
CREATE INDEX job_destinations_rotation ON job_destinations (job, claimed_at NULLS FIRST);

-- No foreign key to jobs: its per-row check would double the cost of COPY.
CREATE TABLE recipients (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job bigint NOT NULL,
    address text NOT NULL,
    -- as the SQLite journal computes it: lower-case, after the last "@"
    domain text GENERATED ALWAYS AS
        (lower(coalesce(substring(address FROM '@([^@]*)$'), ''))) STORED,
    destination text NOT NULL,  -- what claims group by: MX site or relay
    variables jsonb,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN
        ('pending', 'in_flight', 'in_doubt', 'delivered', 'bounced', 'deferred', 'suppressed')),
    attempts integer NOT NULL DEFAULT 0,
    -- -infinity: ready now (pending, in doubt); infinity: never again (deferred for
    -- good, final); never NULL, so readiness is one range in the index below
    next_attempt timestamptz NOT NULL DEFAULT '-infinity',
    code integer,
    enhanced text,
    reply text,
    host text,
    possible_duplicate boolean NOT NULL DEFAULT false,
    lease_owner text,
    lease_expires timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job, address)
);
-- what a claim scans: open recipients of one destination, in the claim's own
-- order (so it reads the first rows instead of sorting the destination's all)
CREATE INDEX recipients_open ON recipients (job, destination, next_attempt, id)
    WHERE state IN ('pending', 'in_flight', 'in_doubt', 'deferred');
-- what a heartbeat updates
CREATE INDEX recipients_leases ON recipients (lease_owner) WHERE lease_owner IS NOT NULL;

-- shared backoff: one worker's 421 pauses the destination for every worker
CREATE TABLE destinations (
    name text PRIMARY KEY,
    paused_until timestamptz,
    pause_code integer,
    pause_enhanced text,
    pause_reply text
);

-- connection seats: slot < cap and the primary key hold the cap; a seat whose
-- holder stopped heartbeating expires and is free again
CREATE TABLE seats (
    destination text NOT NULL,
    slot integer NOT NULL CHECK (slot >= 0),
    holder text,
    expires timestamptz,
    PRIMARY KEY (destination, slot)
);
CREATE INDEX seats_holder ON seats (holder) WHERE holder IS NOT NULL;

-- GCRA per destination: theoretical arrival time in seconds, and what the
-- last request got (so one UPDATE ... RETURNING answers it)
CREATE TABLE rates (
    destination text PRIMARY KEY,
    tat double precision NOT NULL,
    granted integer NOT NULL
);
"""

# reply rules' actions and warm-up counters, shared by every worker
_V2 = """
-- what a reply rule did, why, until when: the log and, while in force, the
-- state every worker obeys (until NULL: bounce-rest, for its job)
CREATE TABLE shaping_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    destination text NOT NULL,
    kind text NOT NULL,
    source text,
    until timestamptz,
    connections integer,
    rate double precision,
    rule text NOT NULL,
    code integer NOT NULL,
    enhanced text,
    reply text NOT NULL,
    job bigint,
    claim text,  -- bounce-rest: the job's claim destination (a domain) that bounces
    worker text NOT NULL
);
CREATE INDEX shaping_actions_until ON shaping_actions (until);
CREATE INDEX shaping_actions_job ON shaping_actions (job);

-- IP warm-up: day 1 of each (egress address, pattern) schedule, and the
-- recipients counted per window (unix seconds of its start)
CREATE TABLE warmup_start (
    source text NOT NULL,
    pattern text NOT NULL,
    first_day date NOT NULL,
    PRIMARY KEY (source, pattern)
);
CREATE TABLE warmup_sent (
    source text NOT NULL,
    pattern text NOT NULL,
    window_start bigint NOT NULL,
    sent integer NOT NULL CHECK (sent >= 0),
    granted integer NOT NULL DEFAULT 0,  -- what the last reserve got (RETURNING)
    PRIMARY KEY (source, pattern, window_start)
);
"""

# v3: a worker that found no free seat of a destination says so until a time;
# holders then keep to a fair share of its cap (store/limits.py)
_V3 = """
CREATE TABLE seat_wants (
    destination text NOT NULL,
    holder text NOT NULL,
    until timestamptz NOT NULL,
    PRIMARY KEY (destination, holder)
);
"""

#: (version, SQL), in order; append, never edit a released one
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2), (3, _V3))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(db: Database) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; return the version found before."""
    schema = sql.Identifier(db.schema)
    with db.using() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"bulkmail:{db.schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"schema {db.schema!r} is at version {found}; this bulkmail knows up to"
                f" {SCHEMA_VERSION}"
            )
        for version, script in MIGRATIONS:
            if version > found:
                conn.execute(script.encode())
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return found


def schema_version(db: Database) -> int:
    """The version recorded in the database (0 when never migrated)."""
    with db.using() as conn:
        row = conn.execute(
            "SELECT to_regclass('schema_version') IS NOT NULL"
        ).fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0
