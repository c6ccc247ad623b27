"""``bulkmail send --journal postgresql://...`` is ``job create`` plus one worker
in one process (and a second run resumes that job); ``report`` and
``bounces`` take a ``postgresql://...?job=ID`` journal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from bulkmail.journal import Status
from bulkmail.store import PgStore
from tests.pgutil import column, pg_url, store_url
from tests.sinkutil import start_sink

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

BULKMAIL = [sys.executable, "-m", "bulkmail"]
DSN = Path(__file__).parent / "data" / "dsn" / "postfix-multi.eml"


async def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([*BULKMAIL, *args], cwd=cwd, capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_send_with_a_postgresql_journal_creates_works_and_resumes_the_job(
    store_url: str, tmp_path: Path,
) -> None:
    recipients = tmp_path / "list.txt"
    recipients.write_text("".join(f"u{i}@d{i % 3}.test\n" for i in range(30))
                          + "alice@example.test\ncarol+news@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\nHello\n")
    report = tmp_path / "report.jsonl"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = ["send", "--sender", "news@sender.test", "--recipients", str(recipients),
                "--message", str(message), "--relay", f"127.0.0.1:{sink.port}", "--tls", "none",
                "--journal", store_url, "--report", str(report)]
        first = await run(args, tmp_path)
        second = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert first.returncode == 0, first.stderr
    assert sink.stats.recipients == 32  # once: the second run resumed the finished job
    assert second.returncode == 0, second.stderr
    assert b"resuming" in second.stderr
    jobs = column(store_url, "SELECT id FROM jobs")
    assert len(jobs) == 1
    job = jobs[0]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rows) == 32 and {r["status"] for r in rows} == {"delivered"}

    journal = f"{store_url}&job={job}"
    summary = await run(["report", journal], tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert b"32" in summary.stdout

    bounced = await run(["bounces", "--journal", journal, str(DSN)], tmp_path)
    assert bounced.returncode == 0, bounced.stderr
    assert b"alice@example.test: bounced" in bounced.stdout
    assert b"carol+news@example.test: bounced" in bounced.stdout  # matched case-insensitively
    with PgStore(store_url) as store:
        counts = store.counts(job)
    assert counts == {Status.DELIVERED: 30, Status.BOUNCED: 2}
