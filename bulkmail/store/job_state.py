"""A job's life as workers see it: loading, started, ended.

``job create`` marks a job loaded only once every recipient is in, so a
worker never finishes a job for being empty while it is being loaded; the
first worker to start on a job records when (``--retry-for`` counts from
there, the same for every worker).
"""

from __future__ import annotations

import json
from typing import Any

from .job_spec import JobSpec
from .store import PgStore

__all__ = [
    "LOADED", "check_job", "find_job", "job_ended", "load_job", "mark_loaded", "open_jobs",
]

#: the job option ``job create`` sets false until every recipient is loaded
LOADED = "loaded"


def mark_loaded(store: PgStore, job: int) -> None:
    """Every recipient of ``job`` is in: workers may now find it done."""
    with store.db.using() as conn:
        conn.execute("UPDATE jobs SET options = options || jsonb_build_object(%s::text, true)"
                     " WHERE id = %s", (LOADED, job))


def find_job(store: PgStore, identity: dict[str, str]) -> int | None:
    """The newest fully loaded, not cancelled job with ``identity``."""
    with store.db.using() as conn:
        row = conn.execute(
            "SELECT id FROM jobs WHERE identity = %s::jsonb AND state <> 'cancelled'"
            " AND coalesce((options->>%s)::boolean, true) ORDER BY id DESC LIMIT 1",
            (json.dumps(identity), LOADED),
        ).fetchone()
    return None if row is None else int(row[0])


def open_jobs(store: PgStore) -> list[tuple[int, bool]]:
    """``(id, loaded)`` of every active job; a job ``job create`` is still
    loading must not be finished for having no recipients yet."""
    with store.db.using() as conn:
        rows = conn.execute(
            "SELECT id, coalesce((options->>%s)::boolean, true) FROM jobs"
            " WHERE state = 'active' ORDER BY id", (LOADED,)
        ).fetchall()
    return [(int(r[0]), bool(r[1])) for r in rows]


def job_ended(store: PgStore, job: int) -> bool:
    """Whether ``job`` can give no more work: cancelled, or done (marked so now
    if nothing is left to send and it is fully loaded)."""
    info = store.get_job(job)
    if info.state != "active":
        return True
    if not info.options.get(LOADED, True):
        return False
    return bool(store.finish_if_done(job))


def load_job(store: PgStore, job: int) -> tuple[dict[str, Any], float]:
    """The job's options, and when the first worker started on it (recorded by
    whoever is first: ``--retry-for`` counts from there, for every worker)."""
    info = store.get_job(job)
    with store.db.using() as conn:
        row = conn.execute(
            "INSERT INTO job_meta (job, key, value)"
            " VALUES (%s, 'started', extract(epoch FROM now())::text)"
            " ON CONFLICT (job, key) DO UPDATE SET value = job_meta.value RETURNING value",
            (job,),
        ).fetchone()
    assert row is not None
    return info.options, float(row[0])


def check_job(store: PgStore, job: int) -> JobSpec:
    """The job's spec, for a worker to refuse a job it cannot send before it starts."""
    info = store.get_job(job)
    spec = JobSpec.from_options(info.options, job=job)
    spec.content()
    return spec
