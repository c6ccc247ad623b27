"""``bulkmail send --metrics --trace`` and ``bulkmail status``, as subprocesses
against the project's sink on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bulkmail.cli.status_command import collect, render, summed
from bulkmail.journal import RecipientRecord, SQLiteJournal, StateChange
from bulkmail.results import Status

from .pgutil import pg_url, store_url
from .test_cli_pg_job import create, worker_args
from .test_cli_send import BULKMAIL, journal_records, run, send_args, start_sink
from .test_metrics import parse, scrape, total
from .test_session_records import check_record

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest


def write_inputs(tmp: Path, n: int, domains: tuple[str, ...] = ("a.test",)) -> tuple[Path, Path]:
    rcpts = tmp / "list.txt"
    rcpts.write_text("".join(f"u{i}@{domains[i % len(domains)]}\n" for i in range(n)))
    message = tmp / "msg.eml"
    message.write_bytes(b"Subject: observed\n\nHello.\n")
    return rcpts, message


async def test_send_serves_metrics_during_the_run_and_writes_a_trace(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 200)
    trace = tmp_path / "trace.jsonl"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        args = send_args(tmp_path, sink.port, rcpts, message, "--max-rcpts", "5",
                         "--connections", "2", "--metrics", "127.0.0.1:0",
                         "--trace", str(trace), "--trace-sample", "1")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(30):
            while (found := re.search(rb"metrics: http://127\.0\.0\.1:(\d+)/metrics", seen)) \
                    is None:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, seen
                seen += chunk
        _, body = await scrape(int(found.group(1)))
        during = parse(body)
        while await proc.stderr.receive_some(4096):
            pass
        assert await proc.wait() == 0
        nursery.cancel_scope.cancel()
    assert "bulkmail_recipients" in {f.name for f in text_string_to_metric_families(body)}
    assert total(during, "bulkmail_results_total") <= 200
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert records
    for record in records:
        check_record(record)
    assert sum(len(t["recipients"]) for r in records for t in r["transactions"]) == 200


async def test_bad_metrics_addresses_are_one_line_and_exit_2(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for address, says in (("nonsense", "expected ADDR:PORT"),
                              (f"127.0.0.1:{port}", f"--metrics 127.0.0.1:{port}:")):
            proc = await run(send_args(tmp_path, 9, rcpts, message, "--metrics", address),
                             tmp_path)
            err = proc.stderr.decode()
            assert proc.returncode == 2, err
            assert says in err and "Traceback" not in err
    # one endpoint (and one trace file) per process would collide: refused for now
    for option in (["--metrics", "127.0.0.1:0"], ["--trace", str(tmp_path / "t.jsonl")]):
        proc = await run(send_args(tmp_path, 9, rcpts, message, "--processes", "2", *option),
                         tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.decode().strip().endswith("not --processes")


async def test_status_shows_deferred_domains_by_age_with_the_last_reason(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 30, ("a.test", "b.test", "c.test"))
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, defer_rate=1.0)  # every RCPT gets 450
        proc = await run(send_args(tmp_path, sink.port, rcpts, message, "--retry-for", "0"),
                         tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 75, proc.stderr.decode()
    journal = str(tmp_path / "journal.sqlite")
    status = await run([*BULKMAIL, "status", journal, "--top", "2"], tmp_path)
    out = status.stdout.decode()
    assert status.returncode == 0, status.stderr.decode()
    assert "deferred 30" in out and "30 still to send" in out
    assert "still to send 30: deferred 30 (no retry scheduled" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # T, deferred, in doubt, then all of them younger than 5 minutes
    assert rows["TOTAL"][1:5] == ["30", "30", "0", "30"]
    assert rows["a.test"][1] == "10" and rows["b.test"][1] == "10"
    assert rows["(1"][2] == "10"  # "(1 others)": c.test
    assert " ".join(rows["a.test"][14:]).startswith("450 4.2.1 ")  # the sink's deferral
    assert len(rows["(1"]) == 15  # no reason for a sum of domains


async def test_status_watch_redraws_and_a_missing_journal_is_exit_2(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 3)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0
    journal = str(tmp_path / "journal.sqlite")
    watch = await run([*BULKMAIL, "status", journal, "--watch", "--interval", "0.1",
                       "--count", "2"], tmp_path)
    out = watch.stdout.decode()
    assert watch.returncode == 0
    assert out.count("recorded 3: delivered 3") == 2 and "nothing queued or deferred" in out
    missing = await run([*BULKMAIL, "status", str(tmp_path / "nope.sqlite")], tmp_path)
    assert missing.returncode == 2
    expected = f"bulkmail status: no journal at {tmp_path}/nope.sqlite"
    assert missing.stderr.decode().strip() == expected


@pytest.mark.parametrize(("fault", "waiting", "absent"), [
    # 450 to every RCPT: each recipient has a reply and waits for its retry
    ({"defer_rate": 1.0}, "deferred 6 (retry scheduled, the earliest in ", "in doubt"),
    # the connection dropped after each end of data: no reply, delivery in doubt
    ({"drop_rate": 1.0}, "in doubt 6 (end of data sent, no reply recorded yet)", "deferred"),
])
async def test_status_tells_deferred_from_in_doubt_during_a_run(
    tmp_path: Path, fault: dict[str, float], waiting: str, absent: str
) -> None:
    """Mid-run, every recipient waits for a retry an hour away: ``status`` says
    whether the server deferred it or its end of data is in doubt; summing in
    SQL and reading every record agree."""
    rcpts, message = write_inputs(tmp_path, 6, ("a.test", "b.test"))
    journal = tmp_path / "journal.sqlite"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, **fault)
        args = send_args(tmp_path, sink.port, rcpts, message, "--max-rcpts", "3",
                         "--retry-first", "1h", "--retry-for", "2h")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=subprocess.PIPE)
        out = ""
        with trio.fail_after(60):
            while "still to send 6: " not in out or absent in out.split("still to send")[1]:
                await trio.sleep(0.1)
                if journal.exists():
                    status = await run([*BULKMAIL, "status", str(journal)], tmp_path)
                    out = status.stdout.decode()
        assert proc.returncode is None  # still running: the retries are an hour away
        with SQLiteJournal(journal) as reader:
            now = time.time()
            by_sql = render(summed(reader, now), now, 10, "j")
            by_record = render(collect(reader.iter_records(), now), now, 10, "j")
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        while await proc.stderr.receive_some(4096):
            pass
        assert await proc.wait() == 75
        nursery.cancel_scope.cancel()
    assert waiting in out and "recorded 6: " + waiting.split(" (")[0] in out
    assert by_sql == by_record
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    deferred, in_doubt = ("3", "0") if "defer_rate" in fault else ("0", "3")
    assert rows["a.test"][1:4] == ["3", deferred, in_doubt]
    if "defer_rate" in fault:  # the reason and the retry's time are there while it runs
        assert " ".join(rows["a.test"][14:]).startswith("450 4.2.1 ")
        due = re.search(r"the earliest in (\d+)m\)", out)
        assert due is not None and 40 <= int(due.group(1)) <= 72  # an hour, +-20% jitter
        assert sink.stats.messages == 0
    else:
        assert sink.stats.messages == 0 and "possible duplicates" not in out
    after = await run([*BULKMAIL, "status", str(journal)], tmp_path)
    # stopped: what waited ends deferred (flagged when its end of data was in doubt)
    assert "still to send 6: deferred 6 (no retry scheduled" in after.stdout.decode()


async def test_a_killed_run_resends_its_deferred_recipients_unflagged(tmp_path: Path) -> None:
    """A recipient the server deferred is recorded so at once: a run killed while
    it waits for its retry leaves it deferred, not in doubt, and the rerun sends
    it without the possible-duplicate flag (the server had said no)."""
    rcpts, message = write_inputs(tmp_path, 4)
    journal = tmp_path / "journal.sqlite"
    async with trio.open_nursery() as nursery:
        deferring = await start_sink(nursery, defer_rate=1.0)
        args = send_args(tmp_path, deferring.port, rcpts, message, "--retry-first", "1h")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path)
        with trio.fail_after(60):
            while not journal.exists() or sum(
                r.status is Status.DEFERRED for r in journal_records(journal).values()
            ) < 4:
                await trio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        accepting = await start_sink(nursery)
        rerun = await run(send_args(tmp_path, accepting.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert accepting.stats.recipients == 4
    assert not any(r.possible_duplicate for r in journal_records(journal).values())


def test_the_table_buckets_by_age_like_qshape() -> None:
    now = 1_000_000.0

    def record(address: str, status: Status, minutes: float, code: int | None = None,
               reply: str | None = None) -> RecipientRecord:
        return RecipientRecord(address, status, code, "4.7.1" if code else None, reply, 1,
                               None, None, False, now - minutes * 60)

    job = collect([
        record("a@x.test", Status.DEFERRED, 1, 451, "the latest"),
        record("b@x.test", Status.DEFERRED, 7, 421, "earlier\nsecond line"),
        record("c@x.test", Status.DEFERRED, 700, 450, "oldest"),
        record("d@x.test", Status.IN_DOUBT, 2000),
        record("e@y.test", Status.DELIVERED, 0.5),
        record("f@y.test", Status.BOUNCED, 30),
    ], now)
    assert job.recent == 1  # e, within the last minute
    x = job.domains["x.test"]
    assert x.total == 4 and x.buckets == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert (x.deferred, x.in_doubt) == (3, 1)
    assert x.last_deferral is not None and x.last_deferral[1] == "451 4.7.1 the latest"
    assert "y.test" not in job.domains
    text = render(job, now, 10, "j")
    assert "recorded 6: delivered 1, bounced 1, deferred 3, in doubt 1" in text
    assert "4 still to send" in text
    assert "still to send 4: deferred 3 (no retry scheduled" in text
    assert ", in doubt 1 (end of data sent, no reply recorded yet)" in text


def test_summing_in_sql_agrees_with_reading_every_record(tmp_path: Path) -> None:
    """The same journal through ``summed`` (SQLite's GROUP BY) and ``collect``:
    ages across qshape's buckets, the latest 4xx per domain, flags, rates."""
    now = 1_000_000.0
    changes = [
        StateChange("a@x.test", Status.DEFERRED, 451, "4.7.1", "the latest", 1,
                    next_attempt=now + 90),
        StateChange("b@x.test", Status.DEFERRED, 421, "4.4.2", "earlier", 2,
                    next_attempt=now + 30),
        StateChange("c@X.test", Status.IN_DOUBT, possible_duplicate=True),
        StateChange("d@y.test", Status.DELIVERED, 250),
        StateChange("e@y.test", Status.BOUNCED, 550, "5.1.1", "no such user"),
        StateChange("f@z.test", Status.DEFERRED, 450, None, "oldest"),
    ]
    minutes = {"a@x.test": 1, "b@x.test": 7, "c@X.test": 2000, "d@y.test": 0.5,
               "e@y.test": 30, "f@z.test": 700}
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        journal.record(changes)
        journal.counts()  # folds the events into the recipients table
        for address, age in minutes.items():  # (the journal stamps them with now)
            journal._db.execute("UPDATE recipients SET updated_at = ? WHERE address = ?",
                                (now - age * 60, address))
        by_sql = summed(journal, now)
        by_record = collect(journal.iter_records(), now)
    assert by_sql == by_record
    assert by_sql.next_retry == now + 30 and by_sql.recent == 1
    x = by_sql.domains["x.test"]
    assert (x.total, x.deferred, x.in_doubt) == (3, 2, 1)
    assert x.last_deferral == (now - 60, "451 4.7.1 the latest")
    assert render(by_sql, now, 10, "j") == render(by_record, now, 10, "j")


async def test_a_worker_serves_its_own_metrics(store_url: str, tmp_path: Path) -> None:
    """``bulkmail worker --metrics``: what this worker sent, scraped while it runs."""
    job = await create(store_url, tmp_path, "email\n" + "".join(
        f"u{i}@a.test\n" for i in range(40)))
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = [*BULKMAIL, *worker_args(store_url, sink.port, "--job", str(job), "--follow",
                                        "--metrics", "127.0.0.1:0")]
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(60):
            while (found := re.search(rb"metrics: http://127\.0\.0\.1:(\d+)/metrics", seen)) \
                    is None:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, seen
                seen += chunk
            port = int(found.group(1))
            samples = parse((await scrape(port))[1])
            while total(samples, "bulkmail_results_total") < 40:  # --follow: it stays up
                await trio.sleep(0.05)
                samples = parse((await scrape(port))[1])
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        nursery.cancel_scope.cancel()
    assert total(samples, "bulkmail_results_total", result="delivered") == 40
    assert sink.stats.recipients == 40
    assert total(samples, "bulkmail_connections") >= 1


async def test_status_of_a_job_in_postgresql(store_url: str, tmp_path: Path) -> None:
    """``bulkmail status postgresql://...?job=ID``: what every worker recorded."""
    job = await create(store_url, tmp_path, "email\n" + "".join(
        f"u{i}@{d}\n" for i in range(6) for d in ("a.test", "b.test")), "--retry-for", "0")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, defer_rate=1.0)  # every RCPT gets 450
        done = await run([*BULKMAIL, *worker_args(store_url, sink.port, "--job", str(job))],
                         tmp_path)
        nursery.cancel_scope.cancel()
    assert done.returncode == 75, done.stderr.decode()
    status = await run([*BULKMAIL, "status", f"{store_url}&job={job}"], tmp_path)
    out = status.stdout.decode()
    assert status.returncode == 0, status.stderr.decode()
    assert "deferred 12" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["a.test"][1] == rows["b.test"][1] == "6"
    assert " ".join(rows["a.test"][14:]).startswith("450 4.2.1 ")
    unknown = await run([*BULKMAIL, "status", f"{store_url}&job=424242"], tmp_path)
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1
