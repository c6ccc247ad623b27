"""``bulkmail job create|status|report|cancel`` and ``bulkmail worker`` as
subprocesses, against real PostgreSQL and the sink."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import trio

from bulkmail.results import Result, Status
from bulkmail.store import PgStore
from tests.pg_workers import ROOT, received
from tests.pgutil import column, pg_url, store_url
from tests.sinkutil import start_sink

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

BULKMAIL = [sys.executable, "-m", "bulkmail"]


async def bulkmail(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([*BULKMAIL, *args], cwd=cwd, capture_stdout=True,
                                  capture_stderr=True, check=False)


async def create(store_url: str, tmp: Path, recipients: str, *extra: str,
                 message: bytes = b"From: news@sender.test\r\nSubject: hi\r\n\r\nHi\r\n",
                 ) -> int:
    (tmp / "list.csv").write_text(recipients)
    (tmp / "message.eml").write_bytes(message)
    done = await bulkmail("job", "create", "--db", store_url, "--sender", "news@sender.test",
                          "--recipients", str(tmp / "list.csv"),
                          "--message", str(tmp / "message.eml"), *extra)
    assert done.returncode == 0, done.stderr.decode()
    return int(done.stdout.decode().splitlines()[-1])  # the id is the last line


def worker_args(store_url: str, port: int, *extra: str) -> list[str]:
    return ["worker", "--db", store_url, "--relay", f"127.0.0.1:{port}", "--tls", "none",
            "--quiet", *extra]


async def test_created_job_is_sent_by_a_worker_that_has_only_the_database(
    store_url: str, tmp_path: Path,
) -> None:
    (tmp_path / "suppress.txt").write_text("CY@a.test\n")
    job = await create(
        store_url, tmp_path,
        "email,name\nann@a.test,Ann\nbob@b.test,Bob\nbob@B.TEST,again\ncy@a.test,Cy\n",
        "--suppress", str(tmp_path / "suppress.txt"),
        "--list-unsubscribe", "https://sender.test/u?e=${email}",
        message=b"From: news@sender.test\r\nSubject: hi\r\n\r\nHi ${name}\r\n",
    )
    for name in ("list.csv", "message.eml", "suppress.txt"):
        (tmp_path / name).unlink()  # the job carries its message: the files are not needed
    status = await bulkmail("job", "status", "--db", store_url, str(job))
    lines = status.stdout.decode().splitlines()
    assert lines[0] == f"job {job}: active"
    assert "pending                2" in lines and "suppressed             1" in lines

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        done = await bulkmail(*worker_args(store_url, sink.port, "--job", str(job)),
                              cwd=tmp_path)
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr.decode()
    assert received(sink) == {"ann@a.test": 1, "bob@b.test": 1}  # bob@B.TEST: the same mailbox
    contents = {m.rcpts[0]: m.content for m in sink.messages}
    assert b"Hi Ann" in contents["ann@a.test"]
    assert b"List-Unsubscribe: <https://sender.test/u?e=bob@b.test>" in contents["bob@b.test"]

    status = await bulkmail("job", "status", "--db", store_url, str(job))
    assert status.stdout.decode().splitlines()[0] == f"job {job}: done"
    report = await bulkmail("job", "report", "--db", store_url, str(job))
    rows = {r["recipient"]: r for r in map(json.loads, report.stdout.decode().splitlines())}
    assert set(rows) == {"ann@a.test", "bob@b.test", "cy@a.test"}
    assert all(list(r) == list(Result("x", Status.DELIVERED).as_dict()) for r in rows.values())
    assert rows["ann@a.test"]["status"] == "delivered" and rows["ann@a.test"]["code"] == 250
    assert rows["ann@a.test"]["attempts"] == 1
    assert rows["cy@a.test"]["status"] == "suppressed"


async def test_deferred_recipients_are_retried_on_the_jobs_schedule(
    store_url: str, tmp_path: Path,
) -> None:
    retried = await create(store_url, tmp_path, "ann@a.test\nbob@b.test\n",
                           "--retry-first", "1s", "--retry-for", "1m")
    given_up = await create(store_url, tmp_path, "cy@c.test\n", "--retry-for", "0")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, greylist=True)
        first = await bulkmail(*worker_args(store_url, sink.port, "--job", str(retried)))
        second = await bulkmail(*worker_args(store_url, sink.port, "--job", str(given_up)))
        nursery.cancel_scope.cancel()
    # greylisted first, delivered by the retry a second later
    assert first.returncode == 0, first.stderr.decode()
    assert received(sink) == {"ann@a.test": 1, "bob@b.test": 1}
    # --retry-for 0: deferred for good, the job done, exit 75 as send's
    assert second.returncode == 75, second.stderr.decode()
    with PgStore(store_url) as store:
        records = {r.address: r for j in (retried, given_up)
                   for r in store.journal(j).iter_records()}
        assert store.get_job(given_up).state == "done"
    assert records["ann@a.test"].attempts == 2 and records["ann@a.test"].status is Status.DELIVERED
    cy = records["cy@c.test"]
    assert (cy.status, cy.code, cy.attempts, cy.next_attempt) == (Status.DEFERRED, 451, 1, None)


async def test_cancelled_job_is_not_sent(store_url: str, tmp_path: Path) -> None:
    job = await create(store_url, tmp_path, "ann@a.test\n")
    cancel = await bulkmail("job", "cancel", "--db", store_url, str(job))
    assert cancel.returncode == 0 and b"cancelled" in cancel.stdout
    again = await bulkmail("job", "cancel", "--db", store_url, str(job))
    assert again.stdout.decode().strip() == f"job {job}: already cancelled"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        done = await bulkmail(*worker_args(store_url, sink.port, "--job", str(job)))
        nursery.cancel_scope.cancel()
    assert done.returncode == 75  # its recipient is still pending
    assert not sink.messages


async def test_sigterm_hands_leases_back_and_follow_waits_for_new_jobs(
    store_url: str, tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.2)
        worker = await trio.lowlevel.open_process(
            [*BULKMAIL, *worker_args(store_url, sink.port, "--follow", "--connections", "1",
                                     "--claim-size", "5", "--max-leased", "40")],
            cwd=ROOT, stderr=subprocess.PIPE)
        # a job created after the worker started is found (--follow)
        job = await create(store_url, tmp_path,
                           "".join(f"u{i}@d{i % 2}.test\n" for i in range(60)))
        with trio.fail_after(30):
            while not sink.messages:
                await trio.sleep(0.01)
        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await worker.wait()
        assert worker.returncode == 0  # --follow: a stop is its normal end
        assert column(store_url, "SELECT count(*) FROM recipients"
                                 " WHERE lease_owner IS NOT NULL") == [0]
        unsent = column(store_url, "SELECT count(*) FROM recipients WHERE state = 'pending'")[0]
        assert 0 < unsent < 60  # stopped midway; what it had not sent went back untouched
        done = await bulkmail(*worker_args(store_url, sink.port, "--job", str(job)))
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr.decode()
    copies = received(sink)
    assert len(copies) == 60 and max(copies.values()) == 1


async def test_bad_input_is_one_line_and_exit_2(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("ann@a.test\n")
    missing = await bulkmail("job", "create", "--db", store_url, "--sender", "a@b.test",
                             "--recipients", str(tmp_path / "list.txt"),
                             "--message", str(tmp_path / "nope.eml"))
    unknown = await bulkmail("job", "status", "--db", store_url, "4242")
    no_job = await bulkmail("worker", "--db", store_url, "--job", "4242", "--relay", "x:1")
    no_server = await bulkmail("job", "status", "--db", "postgresql://postgres@127.0.0.1:1/x",
                               "1")
    for done, text in ((missing, b"cannot read message"), (unknown, b"no job 4242"),
                       (no_job, b"no job 4242"), (no_server, b"cannot connect")):
        assert done.returncode == 2
        assert text in done.stderr and done.stderr.count(b"\n") == 1, done.stderr


async def test_worker_without_job_works_every_job_then_exits(
    store_url: str, tmp_path: Path,
) -> None:
    # the same mailbox in both jobs: each job sends it once, marked under its own job
    first = await create(store_url, tmp_path, "ann@a.test\nbob@b.test\n")
    second = await create(store_url, tmp_path, "ann@a.test\ncy@c.test\n",
                          message=b"From: news@sender.test\r\nSubject: two\r\n\r\nTwo\r\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        done = await bulkmail(*worker_args(store_url, sink.port))
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr.decode()
    assert received(sink) == {"ann@a.test": 2, "bob@b.test": 1, "cy@c.test": 1}
    subjects = sorted(m.content.split(b"Subject: ")[1][:3] for m in sink.messages
                      if m.rcpts == ["ann@a.test"])
    assert subjects == [b"hi\r", b"two"]
    with PgStore(store_url) as store:
        for job in (first, second):
            assert store.get_job(job).state == "done"
            assert store.counts(job) == {Status.DELIVERED: 2}
