"""Worker processes sharing a job through PostgreSQL, one of them SIGKILLed while
it holds recipients in doubt: the others finish the job, nobody is lost, and
the only duplicates are the dead worker's in-doubt recipients, all flagged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bulkmail.journal import Status
from bulkmail.store import PgStore
from tests.pgutil import column, pg_url, store_url, travel

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

ROOT = Path(__file__).resolve().parent.parent


def start_worker(store_url: str, job: int, owner: str, stall_after: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pg_worker", store_url, str(job), owner, "1.0",
         str(stall_after)],
        cwd=ROOT, stderr=subprocess.PIPE,
    )


def wait_for(store_url: str, query: str, deadline: float) -> None:
    while travel(store_url, query) == 0:
        assert time.monotonic() < deadline, f"timed out waiting for: {query}"
        time.sleep(0.02)


@pytest.mark.parametrize(("workers", "stall_after"), [(2, 0), (3, 4), (3, 11)])
def test_killed_worker_loses_nothing_and_its_duplicates_are_flagged(
    store_url: str, workers: int, stall_after: int,
) -> None:
    everyone = [f"user{i}@d{i % 7}.example" for i in range(1500)]
    with PgStore(store_url) as store:
        job = store.create_job()
        store.load_recipients(job, everyone)
        with store.db.using() as conn:
            conn.execute("CREATE TABLE sent_log (address text, owner text, flagged boolean)")
            conn.execute("CREATE TABLE stalled (owner text)")
    victim = start_worker(store_url, job, "victim", stall_after)
    others: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + 120
    try:
        wait_for(store_url, "SELECT 1 FROM stalled", deadline)
        others += [start_worker(store_url, job, f"w{i}", -1) for i in range(1, workers)]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        in_doubt = set(column(store_url, "SELECT address FROM recipients"
                              " WHERE lease_owner = 'victim' AND state = 'in_doubt'"))
        assert in_doubt  # the kill left recipients in doubt
        for worker in others:
            _, err = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert worker.returncode == 0, err.decode()
    finally:
        for process in [victim, *others]:
            if process.poll() is None:
                process.kill()
                process.wait()

    with PgStore(store_url) as store:
        assert store.counts(job) == {Status.DELIVERED: len(everyone)}
        records = {r.address: r for r in store.journal(job).iter_records()}
    sends = Counter(column(store_url, "SELECT address FROM sent_log"))
    unflagged = Counter(column(store_url, "SELECT address FROM sent_log WHERE NOT flagged"))
    assert set(sends) == set(everyone)  # nobody lost
    assert max(sends.values()) == 2  # the dead worker's sent half went out again
    assert max(unflagged.values()) == 1  # a second copy is always flagged
    assert {a for a, n in sends.items() if n > 1} <= in_doubt  # only the dead worker's
    assert {a for a, r in records.items() if r.possible_duplicate} == in_doubt

